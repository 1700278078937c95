"""Skipping the snapshot pass for the first mini-batch is exact (slow tier; the default tier's k = 4 run
checks the first update's ratio is 1). Shuffled mini-batches only: a skip keyed to rows 0..m-1 instead of
the schedule's first mini-batch fails only there; ordered is the same code with the identity order (the
schedule itself: tests/unit/test_update_schedule.py)."""

from __future__ import annotations

import pytest
import torch
from trainer_harness import assert_ok, base_overrides, run_trainer


@pytest.mark.slow
def test_skip_on_and_off_give_the_same_weights_shuffled(tiny_model, toy_data, tmp_path):
    shuffle = True
    runs = {}
    for skip in (True, False):
        out = tmp_path / f"skip_{skip}"
        overrides = base_overrides(tiny_model, toy_data["train16"], out) + [
            "psft.mini_batch_size=2",  # k = 4 on 2 ranks
            f"psft.shuffle_mini_batches={shuffle}",
            f"psft.skip_first_snapshot={skip}",
            "trainer.total_training_steps=2",
        ]
        runs[skip] = run_trainer(out, overrides)
        assert_ok(runs[skip])
    assert runs[True].series("perf/snapshot_rows") == [6, 6]
    assert runs[False].series("perf/snapshot_rows") == [8, 8]
    # With the skip the first update's ratio is exactly 1; without it, the snapshot's log-probs of the
    # same rows agree with the training forward's to float tolerance (same weights, other micro-batches).
    assert runs[True].series("train/first_update_ratio_min") == [1.0, 1.0]
    assert runs[True].series("train/first_update_ratio_max") == [1.0, 1.0]
    for lo, hi in zip(
        runs[False].series("train/first_update_ratio_min"), runs[False].series("train/first_update_ratio_max")
    ):
        assert abs(lo - 1.0) < 1e-5 and abs(hi - 1.0) < 1e-5
    for a, b in zip(runs[True].series("train/loss"), runs[False].series("train/loss"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    # Adam divides by sqrt(v): for a weight whose gradient is ~0 a 1e-7 relative difference in the
    # ratio can move it by a few 1e-6 over 8 updates of size ~lr = 1e-3. Well under one update step.
    w_skip, w_full = runs[True].final_weights(), runs[False].final_weights()
    for name in w_skip:
        torch.testing.assert_close(w_skip[name], w_full[name], rtol=1e-3, atol=1e-5)
        assert (w_skip[name] - w_full[name]).abs().mean() < 1e-7
