"""``psft.loss_agg_mode=micro-token-mean`` (the original's averaging) in the real trainer (Ray, FSDP on
CPU, a tiny random Qwen2): it depends on the number of ranks only through its rule. With one sequence
per micro-batch the rule is seq-mean-token-mean, on 2 ranks and on 1; with the whole mini-batch in one
micro-batch on one rank it is token-mean. The hand computation over explicit micro-batches and ranks
is tests/unit/test_original_aggregation.py. Slow tier: five short runs.
"""

from __future__ import annotations

import pytest
from trainer_harness import assert_ok, base_overrides, run_trainer

# PSFT, k = 2 (the second update has a snapshot ratio), 2 steps, a large lr so weightings show.
COMMON = [
    "psft.mini_batch_size=4",
    "trainer.total_training_steps=2",
    "optim.lr=1e-2",
    "data.use_dynamic_bsz=false",
]


def max_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)


def train(tiny_model, train_file, out, agg: str, ranks: int, micro: int):
    overrides = base_overrides(tiny_model, train_file, out) + COMMON
    overrides += [f"psft.loss_agg_mode={agg}", f"trainer.n_gpus_per_node={ranks}"]
    overrides += [f"data.micro_batch_size_per_gpu={micro}"]
    run = run_trainer(out, overrides)
    assert_ok(run)
    return run


@pytest.mark.slow
def test_micro_token_mean_depends_on_ranks_only_through_its_rule(tiny_model, toy_data, tmp_path):
    data = toy_data["train16"]
    original_2 = train(tiny_model, data, tmp_path / "micro_2ranks", "micro-token-mean", ranks=2, micro=1)
    seq_2 = train(tiny_model, data, tmp_path / "seq_2ranks", "seq-mean-token-mean", ranks=2, micro=1)
    original_1 = train(tiny_model, data, tmp_path / "micro_1rank", "micro-token-mean", ranks=1, micro=1)
    # One sequence per micro-batch: the original's rule is the per-sequence mean, on any number of ranks.
    for other in (seq_2, original_1):
        for key in ("train/loss", "train/objective"):
            for a, b in zip(original_2.series(key), other.series(key), strict=True):
                assert a == pytest.approx(b, rel=1e-5)
    assert max_relative_difference(original_2.final_weights(), seq_2.final_weights()) <= 1e-5
    # Another rank count changes only the float summation order (see test_trainer_e2e's tolerance).
    assert max_relative_difference(original_2.final_weights(), original_1.final_weights()) <= 1e-3

    # The whole mini-batch in one micro-batch on one rank: the original's rule is the token mean.
    whole = train(tiny_model, data, tmp_path / "micro_whole", "micro-token-mean", ranks=1, micro=4)
    token = train(tiny_model, data, tmp_path / "token_whole", "token-mean", ranks=1, micro=4)
    for a, b in zip(whole.series("train/objective"), token.series("train/objective"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert max_relative_difference(whole.final_weights(), token.final_weights()) <= 1e-5
    # ... and not the per-sequence mean: the weighting is real.
    assert max_relative_difference(whole.final_weights(), original_1.final_weights()) > 1e-3
