"""The baselines and snapshot variants with the real trainer (Ray, 2 FSDP ranks on CPU, a tiny random
Qwen2), against numbers computed directly with Hugging Face: DFT and ASFT (k = 1, step-1 loss, entropy
and token accuracy), snapshot=initial against snapshot=step, the reference cache across a resume, and
train/entropy with k = 2. One batch = the whole 8-row training set, 2 steps.

Runs are made on first use and shared by the session (``trained_run``), so a selection of these tests
starts only the runs it needs. Default tier: the DFT/ASFT test; the others are slow.
"""

from __future__ import annotations

import pytest
import torch
from trainer_harness import assert_ok, base_overrides, run_trainer

from psft_assets.toy_rows import make_rows, write_parquet

K2 = ["psft.mini_batch_size=4", "trainer.total_training_steps=2", "optim.lr=1e-2"]
K1 = ["psft.mini_batch_size=8", "trainer.total_training_steps=2", "optim.lr=1e-2"]
RUNS = {
    "step": K2 + ["psft.update_token_metrics=true"],
    "initial": K2 + ["psft.snapshot=initial"],
    "dft": K1 + ["psft.loss_mode=dft"],
    "asft": K1 + ["psft.loss_mode=asft"],
}


@pytest.fixture(scope="module")
def train8(tmp_path_factory):
    return write_parquet(make_rows(8, seed=5), tmp_path_factory.mktemp("baselines") / "train8.parquet")


class Runs:
    """``runs[name]``: the shared run ``name`` of RUNS, trained on first use."""

    def __init__(self, tiny_model, train, trained_run):
        self.tiny_model, self.train, self.trained_run = tiny_model, train, trained_run

    def __getitem__(self, name: str):
        extra = RUNS[name]
        return self.trained_run(f"baselines_{name}", self._overrides(extra))

    def _overrides(self, extra: list[str]):
        return lambda out: base_overrides(self.tiny_model, self.train, out) + extra


@pytest.fixture(scope="module")
def runs(tiny_model, train8, trained_run):
    return Runs(tiny_model, train8, trained_run)


@pytest.fixture(scope="module")
def initial_model(tiny_model, train8):
    """Token means over every demonstration token of train8 (the whole batch) under the initial model,
    computed directly with Hugging Face: entropy, argmax accuracy, NLL and DFT's -sg(p) log p."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.psft.dataset import DemonstrationDataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32, attn_implementation="sdpa")
    dataset = DemonstrationDataset(str(train8), tokenizer, {"max_length": 512})
    sums = {"entropy": 0.0, "token_acc": 0.0, "nll": 0.0, "dft_loss": 0.0}
    tokens = 0.0
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            logits = model(input_ids=item["input_ids"][None], use_cache=False).logits[0].float()
            mask = torch.cat([item["loss_mask"][1:], torch.zeros(1, dtype=torch.long)]).bool()
            log_probs = torch.log_softmax(logits, -1)
            labels = torch.roll(item["input_ids"], -1)
            label_log_prob = log_probs.gather(-1, labels[:, None])[:, 0]
            sums["entropy"] += float((-(log_probs.exp() * log_probs).sum(-1))[mask].sum())
            sums["token_acc"] += float((logits.argmax(-1) == labels)[mask].sum())
            sums["nll"] += float(-label_log_prob[mask].sum())
            sums["dft_loss"] += float(-(label_log_prob.exp() * label_log_prob)[mask].sum())
            tokens += float(mask.sum())
    return {key: value / tokens for key, value in sums.items()}


def test_dft_and_asft_train_with_the_loss_computed_by_hugging_face(runs, initial_model):
    """k = 1: step 1's single update starts from the initial weights, so the value it minimises
    (train/objective) is the initial model's token mean of -sg(p) log p over the demonstration tokens; SFT's
    would be the NLL (train/loss in every mode), ~500x larger here. ASFT adds kl_coef (0.5) * KL to the
    initial model, which is 0 before the first update."""
    dft, asft = runs["dft"], runs["asft"]
    assert initial_model["dft_loss"] < initial_model["nll"] / 10  # the two objectives cannot be confused
    kl = asft.series("train/kl")
    assert len(kl) == 2 and abs(kl[0]) < 1e-6 and kl[1] > 1e-6  # the policy leaves the reference
    assert "train/kl" not in {key for entry in dft.log for key in entry["data"]}  # DFT has no reference
    for run, penalty in ((dft, 0.0), (asft, 0.5 * kl[0])):
        assert run.train_steps() == [1, 2] and run.series("train/updates") == [1, 1]
        objective = run.series("train/objective")[0]
        assert objective == pytest.approx(initial_model["dft_loss"] + penalty, rel=1e-5)
        assert run.series("train/loss")[0] == pytest.approx(initial_model["nll"], rel=1e-5)
        assert run.series("train/entropy")[0] == pytest.approx(initial_model["entropy"], rel=1e-5)
        assert run.series("train/token_acc")[0] == pytest.approx(initial_model["token_acc"], abs=1e-6)
        assert run.series("train/loss")[1] < run.series("train/loss")[0]  # it learns the demonstrations


@pytest.mark.slow
def test_initial_snapshot_equals_step_snapshot_on_step_one_and_differs_after(runs):
    step, initial = runs["step"], runs["initial"]
    assert initial.series("train/updates") == [2, 2]
    assert initial.series("perf/snapshot_rows") == [0, 0]  # old policy = the stored reference
    # Step 1: both old policies are the initial model.
    for key in ("train/loss", "train/objective", "train/clip_frac", "train/ratio_max"):
        assert initial.series(key)[0] == pytest.approx(step.series(key)[0], rel=1e-6, abs=1e-7)
    assert max(step.series("train/clip_frac")[:1]) > 0  # the trust region binds already on step 1
    # Step 2: the initial model is now further away than the step-2 snapshot.
    assert initial.series("train/ratio_max")[1] > step.series("train/ratio_max")[1]
    assert initial.series("train/loss")[1] != pytest.approx(step.series("train/loss")[1], rel=1e-6)
    # The KL to the initial model is logged whenever the reference exists.
    kl = initial.series("train/kl")
    assert len(kl) == 2 and 0 < kl[0] < kl[1]


@pytest.mark.slow
def test_reference_log_probs_are_computed_once_and_reused_on_resume(runs, tiny_model, train8, tmp_path):
    """Stopped after step 1 (an epoch boundary), then resumed in the same folder: the reference cache and
    the checkpoint are reused and every logged number equals the uninterrupted run's."""
    overrides = base_overrides(tiny_model, train8, tmp_path) + RUNS["initial"]
    first = run_trainer(tmp_path, overrides + ["trainer.total_training_steps=1"])
    assert_ok(first)
    resumed = run_trainer(tmp_path, overrides)
    assert_ok(resumed)
    full = runs["initial"]
    assert "reference log-probs: 8 rows" in first.output and "stored in" in first.output
    assert "reference log-probs: reusing" in resumed.output
    assert "reference log-probs: 8 rows" not in resumed.output
    cache = list((resumed.ckpt_dir / "reference_log_probs").glob("*.safetensors"))
    assert len(cache) == 1
    assert [e["step"] for e in resumed.log if "train/loss" in e["data"]] == [1, 2]
    for key in ("train/loss", "train/objective", "train/kl", "train/grad_norm", "train/entropy"):
        assert resumed.series(key) == full.series(key), key


@pytest.mark.slow
def test_train_entropy_at_step_one_is_the_initial_models_entropy_over_the_batch(runs, initial_model):
    """k = 2 with a snapshot pass: the step-start entropy and token accuracy over every demonstration
    token of the batch (here the whole training set), as Hugging Face measures them on the initial model.
    Without a snapshot pass (snapshot=initial) no forward runs for the metrics: each update's training
    forward measures its rows, the second mini-batch's after one update, so only close to it."""
    # step: snapshot pass for the second mini-batch + the first update's probe, all at step-start weights.
    step = runs["step"]
    assert step.series("train/entropy")[0] == pytest.approx(initial_model["entropy"], rel=1e-5)
    assert step.series("train/token_acc")[0] == pytest.approx(initial_model["token_acc"], abs=1e-6)
    initial = runs["initial"]
    assert initial.series("perf/forward_pass_rows") == [0, 0]  # the metrics cost no forward of their own
    assert initial.series("train/entropy")[0] == pytest.approx(initial_model["entropy"], rel=0.05)
    assert initial.series("train/entropy")[0] != pytest.approx(initial_model["entropy"], rel=1e-5)
    # The updating policy's entropy, averaged over the step's updates, only when asked for.
    assert "train/update_entropy" not in runs["initial"].log[0]["data"]
    update_entropy = runs["step"].series("train/update_entropy")
    assert len(update_entropy) == 2 and update_entropy[0] != runs["step"].series("train/entropy")[0]
    assert 0 <= min(runs["step"].series("train/update_token_acc")) <= 1
