"""Step metrics: reductions over ranks and micro-batches, over updates, and the step-start token metrics."""

from __future__ import annotations

import pytest
import torch
from psft_settings import psft_settings

from recipe.psft.step_metrics import (
    StepMetrics,
    batch_token_metrics,
    reduce_worker_metrics,
    update_metrics,
    validation_metrics,
)
from recipe.psft.step_plan import plan_step


def test_worker_metrics_sum_token_means_and_take_extremes_of_ratios():
    # two ranks x two micro-batches; token means arrive pre-divided so their sum is the global mean
    reduced = reduce_worker_metrics(
        {"nll": [[0.5, 0.25], [0.75, 0.5]], "ratio_max": [[1.1, 1.3], [1.2, 1.0]], "ratio_min": [[0.9, 0.8], [1, 1]]}
    )
    assert reduced == {"nll": 2.0, "ratio_max": 1.3, "ratio_min": 0.8}


def test_update_metrics_keep_grad_norm_and_lr_and_drop_the_engine_loss():
    out = update_metrics({"loss": [9.0], "nll": [0.5, 0.5], "grad_norm": 2.5, "lr": 1e-3, "mfu": 0.1})
    assert out == {"nll": 1.0, "grad_norm": 2.5, "lr": 1e-3}


def worker(nll: float, ratio_max: float, **extra) -> dict:
    return {
        "nll": [nll],
        "ratio_max": [ratio_max],
        "ratio_min": [1.0],
        "grad_norm": 1.0,
        "loss_tokens": [10.0],
        **extra,
    }


def psft_plan(**overrides):
    """Batch of 4 rows in mini-batches of 2, in order."""
    return plan_step(psft_settings(shuffle_mini_batches=False, **overrides), 4, 1, 0, fused_kernels=False)


def test_step_means_over_updates_max_over_updates_and_the_first_update_apart():
    metrics = StepMetrics(psft_plan(token_metrics=False))
    metrics.add(0, worker(2.0, 1.0))
    metrics.add(1, worker(1.0, 1.5, lr=0.25))
    out = metrics.finish({}, [])
    assert out["train/loss"] == 1.5 and out["train/nll"] == 1.5
    assert out["train/ratio_max"] == 1.5 and out["train/first_update_ratio_max"] == 1.0
    assert out["train/lr"] == 0.25 and out["train/updates"] == 2 and out["train/psft_active"] == 1.0
    assert "train/entropy" not in out and "train/loss_tokens" not in out


def test_step_start_entropy_is_one_token_mean_over_the_pass_rows_and_the_probed_first_update():
    plan = psft_plan()  # rows 0, 1: first update (probed); rows 2, 3: forward-only pass
    assert plan.pass_rows == [2, 3] and plan.measured_rows == {0, 1}
    masks = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]),
             torch.tensor([0.0, 1.0, 0.0])]  # fmt: skip
    forward = {"entropy": {2: torch.tensor([1.0, 2.0, 3.0]), 3: torch.tensor([9.0, 4.0, 9.0])}}
    metrics = StepMetrics(plan)
    metrics.add(0, worker(1.0, 1.0, entropy=[0.5], token_acc=[0.25], loss_tokens=[3.0]))
    metrics.add(1, worker(1.0, 1.0, entropy=[7.0]))  # not logged: the update ran on moved weights
    out = metrics.finish(forward, masks)
    # pass rows: 1 + 2 + 3 (row 2) + 4 (row 3) over 4 tokens; first update: 0.5 over 3 tokens
    assert out["train/entropy"] == pytest.approx((10.0 + 0.5 * 3) / 7)
    assert out["train/token_acc"] == pytest.approx(0.25)  # only the first update measured it
    assert "train/update_entropy" not in out


def test_update_token_metrics_are_logged_under_their_own_names():
    metrics = StepMetrics(psft_plan(update_token_metrics=True))
    metrics.add(0, worker(1.0, 1.0, entropy=[1.0]))
    metrics.add(1, worker(1.0, 1.0, entropy=[3.0]))
    assert metrics.finish({}, [])["train/update_entropy"] == 2.0


def test_batch_token_metrics_skip_pass_rows_that_a_probed_update_measured():
    masks = [torch.ones(2), torch.ones(2)]
    forward = {"entropy": {0: torch.tensor([100.0, 100.0]), 1: torch.tensor([1.0, 3.0])}}
    out = batch_token_metrics(forward, masks, {"entropy": (10.0, 2.0)}, probed_rows={0})
    assert out == {"train/entropy": pytest.approx((4.0 + 10.0) / 4)}


def test_validation_metrics_weight_batches_by_their_demonstration_tokens():
    out = validation_metrics(
        [
            {"nll": [1.0], "entropy": [2.0], "loss_tokens": [10.0], "ratio_max": [1.0]},
            {"nll": [4.0], "entropy": [5.0], "loss_tokens": [30.0], "ratio_max": [1.0]},
        ]
    )
    assert out == {"val/loss": pytest.approx(3.25), "val/entropy": pytest.approx(4.25)}


def test_sft_steps_measure_the_batch_as_one_token_mean_over_their_probed_updates():
    plan = psft_plan(loss_mode="sft")  # no snapshot pass: both updates' forwards are probed
    assert plan.pass_rows == [] and plan.measuring_updates == 2
    metrics = StepMetrics(plan)
    metrics.add(0, worker(1.0, 1.0, entropy=[2.0], token_acc=[0.5], loss_tokens=[1.0]))
    metrics.add(1, worker(1.0, 1.0, entropy=[4.0], token_acc=[0.0], loss_tokens=[3.0]))
    out = metrics.finish({}, [])
    assert out["train/entropy"] == pytest.approx((2.0 * 1 + 4.0 * 3) / 4)
    assert out["train/token_acc"] == pytest.approx(0.5 / 4)
    assert out["train/psft_active"] == 0.0
