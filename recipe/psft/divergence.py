"""Divergence guard: count optimizer updates whose loss or grad norm is not finite, stop after N.

verl's FSDP engine already skips the optimizer step when the grad norm is not finite (weights and
optimizer state stay as they were), but it still logs the step, advances the LR schedule when asked,
saves and exits 0. This guard makes divergence visible: every non-finite update is counted and
reported, and at ``psft.max_nonfinite`` of them the run stops with exit code 3, naming the step,
the update and the metric. The trainer does not checkpoint a step that had a skipped update and
rewinds the LR schedule of such a step, so a skipped update does not advance it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

from .exit_codes import Diverged

# Checked on every update, in this order: verl's loss (summed over micro-batches, averaged over ranks)
# and the grad norm before clipping.
WATCHED_METRICS = ("loss", "grad_norm")


def _values(value: Any) -> Iterable[float]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _values(item)
    else:
        yield float(value)


def first_nonfinite(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The first watched metric with a non-finite value in one update's worker metrics, or None."""
    for key in WATCHED_METRICS:
        if key in metrics:
            for value in _values(metrics[key]):
                if not math.isfinite(value):
                    return key, value
    return None


class DivergenceGuard:
    """Counts non-finite updates of a run (this process) and stops it at ``max_nonfinite``."""

    def __init__(self, max_nonfinite: int):
        if max_nonfinite < 1:
            raise ValueError(f"psft.max_nonfinite={max_nonfinite}: must be >= 1")
        self.max_nonfinite = max_nonfinite
        self.count = 0
        self.steps_with_skips: set[int] = set()

    def check_update(self, step: int, update: int, metrics: dict[str, Any]) -> None:
        """Record one update's metrics; raise Diverged at the ``max_nonfinite``-th non-finite update."""
        bad = first_nonfinite(metrics)
        if bad is None:
            return
        metric, value = bad
        self.count += 1
        self.steps_with_skips.add(step)
        where = f"step {step}, update {update + 1}: {metric}={value}"
        if self.count >= self.max_nonfinite:
            raise Diverged(
                f"diverged at {where} ({self.count} non-finite updates, psft.max_nonfinite={self.max_nonfinite}). "
                "No checkpoint was written from it; the last checkpoint is intact. Lower optim.lr or raise "
                "optim.lr_warmup_steps, then rerun the same command to resume from the last checkpoint."
            )
        print(
            f"[psft] warning: non-finite {where}; the engine skipped this update "
            f"({self.count} of {self.max_nonfinite} allowed before the run stops)",
            file=sys.stderr,
            flush=True,
        )

    def step_had_skips(self, step: int) -> bool:
        return step in self.steps_with_skips
