"""A step's logged metrics, from what the workers return: reductions over ranks, micro-batches, updates.

Each worker call returns its loss metrics per rank and micro-batch. The loss already divides them so
that their plain sum is the global token mean (``losses.py``); ratios' extremes reduce by max / min.
A step logs the mean over its updates, with ``train/loss`` the NLL of the demonstrations (comparable
across loss modes), and the batch's token metrics from the forward-only pass and the probed updates.
The clipped-token analytics are counts, not means: :class:`ClippedTokenStats` adds them up.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from .losses import METRIC_REDUCTION
from .step_plan import StepPlan
from .token_metrics import CLIPPED_TOKENS

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
        {k: v for k, v in worker_metrics.items() if k not in ("loss", "grad_norm", "lr", "mfu", CLIPPED_TOKENS)}
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


def batch_token_metrics(
    forward: dict[str, dict[int, torch.Tensor]],
    masks: list[torch.Tensor],
    probed: dict[str, tuple[float, float]],
    probed_rows: set[int],
) -> dict[str, float]:
    """train/entropy and train/token_acc: one mean over the demonstration tokens of the batch.

    ``forward``: per-row, per-token values of the forward-only pass; ``masks``: each row's shifted loss
    mask; ``probed``: {name: (token-weighted sum, tokens)} of the measuring updates' probed forwards,
    which stand for ``probed_rows`` (those rows' values in ``forward``, if any, are not counted twice).
    """
    result = {}
    for name in TOKEN_METRICS:
        per_row = forward.get(name, {})
        total = sum(float((per_row[r] * masks[r]).sum()) for r in per_row if r not in probed_rows)
        tokens = sum(float(masks[r].sum()) for r in per_row if r not in probed_rows)
        if name in probed:
            total += probed[name][0]
            tokens += probed[name][1]
        if tokens:
            result[f"train/{name}"] = total / tokens
    return result


class ClippedTokenStats:
    """One step's clipped-token analytics: the sum of the loss's per-micro-batch summaries over
    micro-batches, ranks and updates (``token_metrics.clipped_token_summary``).

    ``histogram``: counts of r over demonstration tokens per bin (empty until a summary arrives);
    ``counts`` / ``ratio_sums``: per clipped token id, how often it was clipped and the sum of its r.
    """

    def __init__(self) -> None:
        self.histogram: list[int] = []
        self.counts: dict[int, int] = defaultdict(int)
        self.ratio_sums: dict[int, float] = defaultdict(float)

    def add(self, value: Any) -> None:
        """Add the summaries in one update's worker value: a summary, or lists of them (per rank, per
        micro-batch, as verl gathers loss metrics), or None."""
        if value is None:
            return
        if isinstance(value, list | tuple):
            for item in value:
                self.add(item)
            return
        hist = value["hist"]
        if not self.histogram:
            self.histogram = [0] * len(hist)
        if len(hist) != len(self.histogram):
            raise ValueError(f"clipped-token summary with {len(hist)} ratio bins, expected {len(self.histogram)}")
        self.histogram = [a + b for a, b in zip(self.histogram, hist, strict=True)]
        for token, count, ratio_sum in zip(value["ids"], value["counts"], value["ratio_sums"], strict=True):
            self.counts[int(token)] += int(count)
            self.ratio_sums[int(token)] += float(ratio_sum)

    @property
    def tokens(self) -> int:
        """Demonstration tokens seen (each update's forward counts its mini-batch's tokens)."""
        return sum(self.histogram)

    @property
    def clipped(self) -> int:
        return sum(self.counts.values())

    def top(self, n: int) -> list[tuple[int, int, float]]:
        """The ``n`` most often clipped token ids as (id, count, mean r), by count, ties by id."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]
        return [(token, count, self.ratio_sums[token] / count) for token, count in ranked]


class StepMetrics:
    """Collects one step's update metrics; :meth:`finish` turns them into the step's logged metrics.
    ``clipped`` holds the step's clipped-token analytics (empty unless the loss produced them)."""

    def __init__(self, plan: StepPlan):
        self.plan = plan
        self.per_update: dict[str, list[float]] = defaultdict(list)
        self.probed: dict[str, tuple[float, float]] = {}  # {name: (token-weighted sum, tokens)}
        self.clipped = ClippedTokenStats()

    def add(self, update: int, worker_metrics: dict[str, Any]) -> None:
        self.clipped.add(worker_metrics.get(CLIPPED_TOKENS))
        metrics = update_metrics(worker_metrics)
        if self.plan.measures(update):
            for name in TOKEN_METRICS:
                if name in metrics:
                    total, tokens = self.probed.get(name, (0.0, 0.0))
                    self.probed[name] = (
                        total + metrics[name] * metrics["loss_tokens"],
                        tokens + metrics["loss_tokens"],
                    )
        for name in TOKEN_METRICS:  # per-update values are logged only under their own names
            if name in metrics:
                value = metrics.pop(name)
                if self.plan.update_token_metrics:
                    metrics[f"update_{name}"] = value
        for key, value in metrics.items():
            self.per_update[key].append(value)

    def finish(self, forward: dict[str, dict[int, torch.Tensor]], masks: list[torch.Tensor]) -> dict[str, float]:
        result = step_metrics(self.per_update)
        result.update(batch_token_metrics(forward, masks, self.probed, self.plan.measured_rows))
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
