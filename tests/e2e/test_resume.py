"""Stop after step 2, resume, and land on exactly the uninterrupted run's step 3."""

from __future__ import annotations

import pytest
from trainer_harness import assert_ok, base_overrides, run_trainer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "dataset",
    ["train24", "train16"],  # 3 steps per epoch: stop mid-epoch; 2 steps per epoch: stop on the boundary
    ids=["mid_epoch", "epoch_boundary"],
)
def test_resume_matches_uninterrupted_run(tiny_model, toy_data, tmp_path, dataset):
    overrides = ["psft.mini_batch_size=4", "psft.shuffle_mini_batches=true"]
    full_dir = tmp_path / "full"
    full = run_trainer(full_dir, base_overrides(tiny_model, toy_data[dataset], full_dir) + overrides)
    assert_ok(full)

    part_dir = tmp_path / "resumed"
    first = run_trainer(
        part_dir,
        base_overrides(tiny_model, toy_data[dataset], part_dir) + overrides + ["trainer.total_training_steps=2"],
    )
    assert_ok(first)
    assert (part_dir / "ckpt" / "global_step_2").is_dir()
    resumed = run_trainer(part_dir, base_overrides(tiny_model, toy_data[dataset], part_dir) + overrides)
    assert_ok(resumed)

    assert [e["step"] for e in resumed.log if "train/loss" in e["data"]] == [1, 2, 3]  # the log kept steps 1-2
    assert resumed.series("train/loss")[:2] == full.series("train/loss")[:2]
    assert resumed.series("train/loss")[2] == full.series("train/loss")[2]
    assert resumed.series("train/grad_norm")[2] == full.series("train/grad_norm")[2]
