"""``psft.loss_agg_mode=micro-token-mean`` (the original's averaging) and the no-clip ablation.

The original (zwhong714/PSFT, verl 0.5's ``dp_actor.update_policy``) computed, on each rank and for
each micro-batch, ``masked_mean(loss, response_mask) * loss_scale_factor`` with ``loss_scale_factor =
n_micro / ppo_mini_batch_size_per_gpu`` (dynamic batch size; ``1 / gradient_accumulation``, the same
number, otherwise), called ``backward`` on each, and FSDP averaged the gradients over ranks. The tests
replay exactly that by hand on explicit micro-batches on 2 ranks and compare it with ``TokenLoss``
called as verl 0.9.1's engine calls it (once per micro-batch, ``dp_size`` and the driver's
``batch_num_sequences`` in ``data``; the engine sums a rank's micro-batch losses, FSDP averages ranks).
"""

from __future__ import annotations

import math
from pathlib import Path

import loss_batches
import pytest
import torch
from loss_batches import nested

from recipe.psft.config_checks import ConfigError, check_config
from recipe.psft.losses import TokenLoss, psft_surrogate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipe" / "psft" / "config"

LENGTHS = [5, 13, 8, 21, 6, 10, 17, 4]  # one mini-batch of 8 rows, every row with a prompt token first
# Two ranks of 4 rows each; micro-batches of different sizes and lengths, as dynamic batching cuts them.
SPLIT = [[[0, 1], [2], [3]], [[4, 5, 6], [7]]]
MINI_BATCH = len(LENGTHS)


def rows_of(batch: dict, rows: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each row in the packed batch."""
    starts = [0, *torch.tensor(batch["lengths"]).cumsum(0).tolist()]
    return [(starts[r], starts[r + 1]) for r in rows]


def per_row_shifted_mask(batch: dict, lo: int, hi: int) -> torch.Tensor:
    """The loss mask aligned with log_probs[t] (which scores token t + 1) inside one row."""
    mask = batch["loss_mask"][lo:hi].clone()
    return torch.cat([mask[1:], torch.zeros(1, dtype=mask.dtype)]).to(torch.float64)


def recipe_step(loss: TokenLoss, batch: dict, split, old_shift=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mini-batch's loss and d loss / d log_probs through TokenLoss, micro-batch by micro-batch."""
    log_probs = batch["log_probs"].clone().requires_grad_(True)
    dp = len(split)
    num_tokens = int(sum(per_row_shifted_mask(batch, a, b).sum() for a, b in spans_all(batch)))
    rank_losses = []
    for rank in split:
        total = torch.zeros((), dtype=torch.float64)
        for micro in rank:
            spans = rows_of(batch, micro)
            index = torch.cat([torch.arange(a, b) for a, b in spans])
            lengths = [b - a for a, b in spans]
            data = {
                "loss_mask": nested(batch["loss_mask"][index], lengths),
                "dp_size": dp,
                "batch_num_tokens": num_tokens,
                "batch_num_sequences": MINI_BATCH,
            }
            if old_shift is not None:
                data["old_log_probs"] = nested((batch["log_probs"] - old_shift)[index], lengths)
            value, _ = loss(model_output={"log_probs": nested(log_probs[index], lengths)}, data=data)
            total = total + value  # the engine: backward per micro-batch, i.e. the sum
        rank_losses.append(total)
    mean = torch.stack(rank_losses).mean()  # FSDP: the gradient averaged over ranks
    mean.backward()
    return mean.detach(), log_probs.grad


def spans_all(batch: dict) -> list[tuple[int, int]]:
    return rows_of(batch, list(range(len(batch["lengths"]))))


def original_step(per_token, batch: dict, split, old_shift=None) -> tuple[torch.Tensor, torch.Tensor]:
    """verl 0.5 ``dp_actor.update_policy``, by hand: per micro-batch masked_mean x n_micro / mini_per_gpu."""
    log_probs = batch["log_probs"].clone().requires_grad_(True)
    mini_per_gpu = MINI_BATCH // len(split)
    rank_losses = []
    for rank in split:
        total = torch.zeros((), dtype=torch.float64)
        for micro in rank:
            spans = rows_of(batch, micro)
            olds = [None if old_shift is None else old_shift[a:b] for a, b in spans]
            values = torch.cat([per_token(log_probs[a:b], old) for (a, b), old in zip(spans, olds, strict=True)])
            mask = torch.cat([per_row_shifted_mask(batch, a, b) for a, b in spans])
            masked_mean = (values * mask).sum() / mask.sum()
            total = total + masked_mean * (len(micro) / mini_per_gpu)
        rank_losses.append(total)
    mean = torch.stack(rank_losses).mean()
    mean.backward()
    return mean.detach(), log_probs.grad


def nll(log_prob, _old):
    return -log_prob


def psft_objective(log_prob, old_shift):
    return -psft_surrogate(log_prob, log_prob.detach() - old_shift, 0.2, 0.28)[0]


def test_micro_token_mean_matches_the_originals_rule_by_hand():
    batch = loss_batches.make_batch(LENGTHS, seed=21, min_prompt=1)
    value, grad = recipe_step(TokenLoss("sft", loss_agg_mode="micro-token-mean"), batch, SPLIT)
    expected, expected_grad = original_step(nll, batch, SPLIT)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    # Not a token mean, nor a sequence mean: the micro-batches' shares weigh each micro-batch's tokens.
    token_mean, _ = recipe_step(TokenLoss("sft"), batch, SPLIT)
    seq_mean, _ = recipe_step(TokenLoss("sft", loss_agg_mode="seq-mean-token-mean"), batch, SPLIT)
    assert not torch.isclose(value, token_mean) and not torch.isclose(value, seq_mean)


def test_micro_token_mean_matches_the_original_for_psft_with_clipped_tokens():
    batch = loss_batches.make_batch(LENGTHS, seed=22, min_prompt=1)
    shift = 0.4 * torch.sin(torch.arange(sum(LENGTHS), dtype=torch.float64))  # some r > 1.28, some < 0.8
    value, grad = recipe_step(TokenLoss("psft", loss_agg_mode="micro-token-mean"), batch, SPLIT, old_shift=shift)
    expected, expected_grad = original_step(psft_objective, batch, SPLIT, old_shift=shift)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(grad) < sum(LENGTHS)  # clipped tokens got no gradient


def test_micro_token_mean_limits_one_sequence_per_micro_batch_and_one_micro_batch():
    """Over the rank split the rule is all that matters: one sequence per micro-batch (the original's
    LIMO run, mini-batch 8 on 8 GPUs) is seq-mean-token-mean on any number of ranks; the whole
    mini-batch in one micro-batch on one rank is token-mean."""
    batch = loss_batches.make_batch(LENGTHS, seed=23, min_prompt=1)
    micro = TokenLoss("sft", loss_agg_mode="micro-token-mean")
    seq = TokenLoss("sft", loss_agg_mode="seq-mean-token-mean")
    singles_2_ranks = [[[r] for r in range(4)], [[r] for r in range(4, 8)]]
    singles_4_ranks = [[[r] for r in range(i, i + 2)] for i in range(0, 8, 2)]
    reference, reference_grad = recipe_step(seq, batch, [[list(range(8))]])
    for split in (singles_2_ranks, singles_4_ranks):
        value, grad = recipe_step(micro, batch, split)
        torch.testing.assert_close(value, reference, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-15)
    whole, whole_grad = recipe_step(micro, batch, [[list(range(8))]])
    token, token_grad = recipe_step(TokenLoss("sft"), batch, [[list(range(8))]])
    torch.testing.assert_close(whole, token, rtol=1e-12, atol=0)
    torch.testing.assert_close(whole_grad, token_grad, rtol=1e-12, atol=1e-15)


def test_micro_token_mean_objective_metric_is_the_mini_batch_objective():
    batch = loss_batches.make_batch(LENGTHS, seed=24, min_prompt=1)
    expected, _ = original_step(nll, batch, SPLIT)
    loss = TokenLoss("sft", loss_agg_mode="micro-token-mean")
    summed = 0.0
    for rank in SPLIT:
        for micro in rank:
            spans = rows_of(batch, micro)
            index = torch.cat([torch.arange(a, b) for a, b in spans])
            lengths = [b - a for a, b in spans]
            data = {
                "loss_mask": nested(batch["loss_mask"][index], lengths),
                "dp_size": len(SPLIT),
                "batch_num_tokens": 1,
                "batch_num_sequences": MINI_BATCH,
            }
            _, metrics = loss(model_output={"log_probs": nested(batch["log_probs"][index], lengths)}, data=data)
            summed += metrics["objective"]  # the driver sums micro-batches and ranks
    assert summed == pytest.approx(expected.item(), rel=1e-12)


def test_infinite_upper_clip_is_the_plain_importance_weighted_objective():
    """The paper's no-clip ablation, psft.clip_ratio_high=inf: L = -mean r, gradient -r on every token."""
    batch = loss_batches.make_batch([9, 12, 7], seed=25, min_prompt=1)
    shift = 0.6 * torch.cos(torch.arange(sum(batch["lengths"]), dtype=torch.float64))  # r from 0.55 to 1.82
    loss = TokenLoss("psft", 0.2, math.inf)
    value, grad = recipe_step(loss, batch, [[[0, 1, 2]]], old_shift=shift)
    mask = torch.cat([per_row_shifted_mask(batch, a, b) for a, b in spans_all(batch)]).bool()
    ratio = torch.exp(shift)
    assert (ratio[mask] > 1.28).any() and (ratio[mask] < 0.8).any()
    torch.testing.assert_close(value, -ratio[mask].mean())
    torch.testing.assert_close(grad[mask], -ratio[mask] / mask.sum())
    assert torch.all(grad[~mask] == 0)
    clipped, _ = recipe_step(TokenLoss("psft", 0.2, 0.28), batch, [[[0, 1, 2]]], old_shift=shift)
    assert not torch.isclose(value, clipped)


def test_config_accepts_the_new_aggregation_and_an_infinite_clip(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    train = tmp_path / "train.parquet"
    train.touch()
    overrides = [
        f"data.train_files={train}",
        "model.path=Qwen/Qwen2.5-7B-Instruct",
        "psft.loss_agg_mode=micro-token-mean",
        "psft.clip_ratio_high=inf",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name="psft_trainer", overrides=overrides)
    assert math.isinf(config.psft.clip_ratio_high)
    check_config(config)
    bad = OmegaConf.merge(config, {"psft": {"loss_agg_mode": "micro-mean"}})
    with pytest.raises(ConfigError, match="micro-token-mean"):
        check_config(bad)


def test_resume_refuses_a_changed_loss_averaging_and_still_reads_older_checkpoints():
    from recipe.psft.exit_codes import ResumeMismatch
    from recipe.psft.run_identity import check_resume

    current = {"psft.loss_mode": "psft", "psft.loss_agg_mode": "micro-token-mean"}
    with pytest.raises(ResumeMismatch, match="psft.loss_agg_mode: checkpoint has 'token-mean'"):
        check_resume({**current, "psft.loss_agg_mode": "token-mean"}, current, [], "ckpt")
    # Checkpoints written before the key joined the identity do not record it: nothing to compare.
    assert check_resume({"psft.loss_mode": "psft"}, current, [], "ckpt") == []
