"""A step's logged metrics, from what the workers return: reductions over ranks, micro-batches, updates.

Each worker call returns its loss metrics per rank and micro-batch. The loss already divides them so
that their plain sum is the global token mean (``losses.py``); ratios' extremes reduce by max / min.
A step logs the mean over its updates, with ``train/loss`` the NLL of the demonstrations (comparable
across loss modes), and the step-start token metrics from the forward-only pass and the first update.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from .losses import METRIC_REDUCTION
from .step_plan import StepPlan

TOKEN_METRICS = ("entropy", "token_acc")


def reduction_for(key: str, default: str) -> str:
    """How a metric combines over micro-batches, ranks and updates: sum, mean, max or min."""
    if key.startswith("perf/"):
        return "max"
    return METRIC_REDUCTION.get(key, default)


def _reduce(values: list[float], how: str) -> float:
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) if how == "sum" else float(np.mean(values))


def reduce_worker_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Reduce a worker's per-rank, per-micro-batch loss metrics to scalars (see METRIC_REDUCTION)."""

    def flatten(value: Any) -> list[float]:
        if isinstance(value, list | tuple):
            return [x for item in value for x in flatten(item)]
        return [float(value)]

    return {key: _reduce(flatten(value), reduction_for(key, "sum")) for key, value in metrics.items()}


def update_metrics(worker_metrics: dict[str, Any]) -> dict[str, float]:
    """One optimizer update's metrics: the loss metrics reduced over ranks, plus grad norm and lr."""
    reduced = reduce_worker_metrics(
        {k: v for k, v in worker_metrics.items() if k not in ("loss", "grad_norm", "lr", "mfu")}
    )
    reduced["grad_norm"] = float(worker_metrics["grad_norm"])
    if "lr" in worker_metrics:  # present on the step's last update, after the scheduler advanced
        reduced["lr"] = float(worker_metrics["lr"])
    return reduced


def step_metrics(per_update: dict[str, list[float]]) -> dict[str, float]:
    """A step's logged metrics from its updates' (means, except maxima/minima; the first update apart)."""
    out = {key: _reduce(values, reduction_for(key, "mean")) for key, values in per_update.items()}
    result = {f"train/{k}": v for k, v in out.items() if not k.startswith("perf/") and k not in ("loss_tokens", "lr")}
    result.update({k: v for k, v in out.items() if k.startswith("perf/")})
    result["train/loss"] = out["nll"]  # the NLL of the demonstrations, comparable across loss modes
    result["train/lr"] = per_update["lr"][-1] if per_update.get("lr") else float("nan")
    result["train/first_update_ratio_min"] = per_update["ratio_min"][0]
    result["train/first_update_ratio_max"] = per_update["ratio_max"][0]
    result["train/updates"] = len(per_update["nll"])
    return result


def step_start_token_metrics(
    forward: dict[str, dict[int, torch.Tensor]],
    masks: list[torch.Tensor],
    first_update: dict[str, float],
    first_rows: set[int],
) -> dict[str, float]:
    """train/entropy and train/token_acc over the whole batch at the step-start weights.

    ``forward``: per-row, per-token values of the forward-only pass; ``masks``: each row's shifted loss
    mask; ``first_update``: the probed first update's token means and its ``loss_tokens``, standing for
    ``first_rows`` (token-weighted, so the result is one mean over all demonstration tokens).
    """
    result = {}
    for name in TOKEN_METRICS:
        per_row = forward.get(name, {})
        total = sum(float((per_row[r] * masks[r]).sum()) for r in per_row if r not in first_rows)
        tokens = sum(float(masks[r].sum()) for r in per_row if r not in first_rows)
        if name in first_update:
            total += first_update[name] * first_update["loss_tokens"]
            tokens += first_update["loss_tokens"]
        if tokens:
            result[f"train/{name}"] = total / tokens
    return result


class StepMetrics:
    """Collects one step's update metrics; :meth:`finish` turns them into the step's logged metrics."""

    def __init__(self, plan: StepPlan):
        self.plan = plan
        self.per_update: dict[str, list[float]] = defaultdict(list)
        self.first_update: dict[str, float] = {}

    def add(self, update: int, worker_metrics: dict[str, Any]) -> None:
        metrics = update_metrics(worker_metrics)
        if update == 0 and self.plan.probe_first:
            self.first_update = {k: metrics[k] for k in (*TOKEN_METRICS, "loss_tokens") if k in metrics}
        for name in TOKEN_METRICS:  # per-update values are logged only under their own names
            if name in metrics:
                value = metrics.pop(name)
                if self.plan.update_token_metrics:
                    metrics[f"update_{name}"] = value
        for key, value in metrics.items():
            self.per_update[key].append(value)

    def finish(self, forward: dict[str, dict[int, torch.Tensor]], masks: list[torch.Tensor]) -> dict[str, float]:
        first_rows = self.plan.first_rows if self.plan.probe_first else set()
        result = step_metrics(self.per_update)
        result.update(step_start_token_metrics(forward, masks, self.first_update, first_rows))
        result["train/psft_active"] = float(self.plan.mode == "psft")
        return result


def validation_metrics(worker_outputs: list[dict[str, Any]]) -> dict[str, float]:
    """``val/loss`` (NLL), ``val/entropy`` and ``val/token_acc``: token means over the validation set,
    from the per-batch worker metrics of forward-only passes."""
    totals: dict[str, float] = defaultdict(float)
    for output in worker_outputs:
        metrics = reduce_worker_metrics(
            {k: v for k, v in output.items() if k in ("nll", *TOKEN_METRICS, "loss_tokens")}
        )
        tokens = metrics.pop("loss_tokens")
        totals["tokens"] += tokens
        for key, value in metrics.items():
            totals[key] += value * tokens
    n = max(totals.pop("tokens"), 1.0)
    result = {f"val/{k}": v / n for k, v in totals.items()}
    result["val/loss"] = result.pop("val/nll")
    return result
