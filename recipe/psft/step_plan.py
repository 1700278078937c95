"""What one training step does, decided before any worker is called: pure, testable without Ray.

A step takes one global batch and makes ``psft.epochs`` passes over it in mini-batches of
``psft.mini_batch_size`` rows, one optimizer update each (the *schedule*). In PSFT the updates after
the first need the snapshot's log-probs (the step-start policy, pi_old): a forward-only pass at the
step-start weights computes them for exactly the rows that need them.

The token metrics (``train/entropy``, ``train/token_acc``) never add a forward of their own where a
training forward can measure them through the no-grad probe:

* a step with a snapshot pass (PSFT, k > 1) measures the step-start policy over the whole batch: the
  pass covers every row but the first mini-batch's, whose first training forward runs on the
  step-start weights and is probed;
* a step without one (SFT, DFT, SFT-KL, ASFT, ``snapshot=initial``, warm-up steps, k = 1) probes the
  training forward of every update of its first pass: each row is measured once, at the weights it is
  trained from (the step-start weights for the first mini-batch, after j updates for the (j+1)-th).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .losses import KL_LOSS_MODES

# A step's mini-batch order is seeded by trainer.seed * STEP_SEED_STRIDE + step: a prime stride keeps
# the (seed, step) pairs of different runs from sharing orders.
STEP_SEED_STRIDE = 1_000_003


def update_schedule(batch_size: int, mini_batch_size: int, epochs: int, shuffle: bool, seed: int) -> list[torch.Tensor]:
    """Row indices of each optimizer update of one step: ``epochs`` passes of k mini-batches."""
    generator = torch.Generator().manual_seed(seed)
    schedule = []
    for _ in range(epochs):
        order = torch.randperm(batch_size, generator=generator) if shuffle else torch.arange(batch_size)
        schedule.extend(order.split(mini_batch_size))
    return schedule


def rows_needing_snapshot(schedule: list[torch.Tensor], skip_first: bool) -> torch.Tensor:
    """Rows whose old log-probs must come from the snapshot pass (sorted)."""
    needed = schedule[1:] if skip_first else schedule
    if not needed:
        return torch.empty(0, dtype=torch.long)
    return torch.unique(torch.cat(needed))


def needs_reference(psft: Any) -> bool:
    """Whether a run needs the initial model's log-probs of the training set."""
    return psft.loss_mode in KL_LOSS_MODES or psft.get("snapshot", "step") == "initial" or bool(psft.get("log_kl"))


def shifted_loss_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """A row's loss mask aligned with its log-probs (log_probs[t] scores token t + 1), as the loss does."""
    return torch.cat([loss_mask[1:], loss_mask.new_zeros(1)])


@dataclass(frozen=True)
class StepPlan:
    """One step's decisions. Row numbers index the step's batch."""

    mode: str  # the loss of this step: psft.loss_mode, or sft during psft.sft_warmup_steps
    schedule: list[torch.Tensor]  # the rows of each optimizer update, in order
    snapshot: bool  # PSFT against the step's snapshot: old log-probs come from the forward-only pass
    initial_snapshot: bool  # PSFT against the initial model: old log-probs are the reference's
    skip_first: bool  # the first update's ratio is taken against its own detached log-probs (r == 1)
    pass_rows: list[int]  # rows of the forward-only pass at the step-start weights (sorted)
    token_metrics: bool  # psft.token_metrics
    measuring_updates: int  # the first N updates' probed forwards measure train/entropy of their rows
    update_token_metrics: bool  # every update's forward is probed (train/update_entropy, ...)

    @property
    def measured_rows(self) -> set[int]:
        """Rows whose train/entropy and train/token_acc come from a probed training forward."""
        return {int(r) for rows in self.schedule[: self.measuring_updates] for r in rows.tolist()}

    def gets_snapshot_log_probs(self, update: int) -> bool:
        return self.snapshot and (update > 0 or not self.skip_first)

    def measures(self, update: int) -> bool:
        """Whether update ``update``'s probed forward counts toward train/entropy and train/token_acc."""
        return update < self.measuring_updates

    def probes(self, update: int) -> bool:
        """Whether update ``update``'s training forward runs the no-grad token-metrics probe."""
        return self.token_metrics and (self.update_token_metrics or self.measures(update))


def plan_step(psft: Any, batch_size: int, step: int, seed: int, fused_kernels: bool) -> StepPlan:
    """The plan of global step ``step`` (1-based) for a batch of ``batch_size`` rows.

    ``fused_kernels``: the model never materialises logits (``model.use_fused_kernels``), so the probe
    cannot see a training forward's logits and the forward-only pass measures every row itself.
    """
    mode = "sft" if step <= int(psft.sft_warmup_steps) else str(psft.loss_mode)
    schedule = update_schedule(
        batch_size,
        int(psft.mini_batch_size),
        int(psft.epochs),
        bool(psft.shuffle_mini_batches),
        seed=seed * STEP_SEED_STRIDE + step,
    )
    snapshot = mode == "psft" and psft.snapshot == "step"
    skip_first = bool(psft.skip_first_snapshot)
    token_metrics = bool(psft.token_metrics)
    first_rows = set(schedule[0].tolist())
    pass_rows = set(rows_needing_snapshot(schedule, skip_first).tolist()) if snapshot else set()
    measuring_updates = 0
    if token_metrics and fused_kernels:
        # No training forward shows the probe its logits: the pass measures every row itself.
        pass_rows |= set(range(batch_size)) if psft.batch_entropy else set()
    elif token_metrics and pass_rows:
        if psft.batch_entropy:
            pass_rows |= set(range(batch_size)) - first_rows
        measuring_updates = 0 if first_rows <= pass_rows else 1
    elif token_metrics:
        measuring_updates = len(schedule) // int(psft.epochs) if psft.batch_entropy else 1
    return StepPlan(
        mode=mode,
        schedule=schedule,
        snapshot=snapshot,
        initial_snapshot=mode == "psft" and psft.snapshot == "initial",
        skip_first=skip_first,
        pass_rows=sorted(pass_rows),
        token_metrics=token_metrics,
        measuring_updates=measuring_updates,
        update_token_metrics=bool(psft.update_token_metrics),
    )
