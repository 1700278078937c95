"""Reaching into verl's engine workers from the driver, through Ray's ``__ray_call__``.

* :func:`rewind_lr_schedule`: undo the LR-scheduler step of a global step that had a skipped
  (non-finite) update. verl's worker advances the scheduler inside ``train_batch`` when the update
  carries ``update_lr_scheduler=True``, before anyone can see the grad norm; ``TrainingWorker`` has no
  remote method to step it back.
* :func:`dead_workers`: which workers of a group are gone (their actor error), asked after a failed call.
"""

from __future__ import annotations

from typing import Any

import ray


def _rewind_one(worker: Any) -> float:
    # LambdaLR.step() sets last_epoch += 1 and the lr for it: step back to the previous step's lr.
    scheduler = worker.engine.lr_scheduler
    scheduler.last_epoch -= 2
    scheduler.step()
    return scheduler.get_last_lr()[0]


def rewind_lr_schedule(worker_group: Any) -> float:
    """Step every worker's LR scheduler back by one; return the lr now in effect."""
    lrs = ray.get([worker.__ray_call__.remote(_rewind_one) for worker in worker_group.workers])
    return float(lrs[0])


def dead_workers(worker_group: Any, timeout_s: float = 20.0) -> list[str]:
    """Describe each worker of ``worker_group`` that no longer answers because its actor died."""
    probes = [worker.__ray_ready__.remote() for worker in worker_group.workers]
    ray.wait(probes, num_returns=len(probes), timeout=timeout_s)
    dead = []
    for rank, probe in enumerate(probes):
        try:
            ray.get(probe, timeout=0.1)
        except ray.exceptions.RayActorError as exc:
            first = str(exc).strip().splitlines()
            dead.append(f"rank {rank}: {first[0] if first else type(exc).__name__}")
        except ray.exceptions.GetTimeoutError:
            continue  # alive but busy (e.g. waiting on a dead peer)
    return dead
