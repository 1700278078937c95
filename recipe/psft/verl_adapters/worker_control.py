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


def dead_workers(worker_group: Any, timeout_s: float = 10.0) -> list[str]:
    """Describe each worker of ``worker_group`` whose actor died: rank and Ray's reason (pid, node ip)."""
    probes = [worker.__ray_ready__.remote() for worker in worker_group.workers]
    ray.wait(probes, num_returns=len(probes), timeout=timeout_s)
    dead = []
    for rank, probe in enumerate(probes):
        try:
            ray.get(probe, timeout=0.1)
        except ray.exceptions.RayActorError as exc:
            dead.append(f"rank {rank}: {_reason(exc)}")
        except ray.exceptions.GetTimeoutError:
            continue  # alive but busy (e.g. still waiting on a dead peer)
    return dead


def _reason(exc: Exception) -> str:
    # Ray's ActorDiedError text carries the class, pid, node ip and why the process exited.
    text = " ".join(str(exc).split())
    return text[:400] + ("..." if len(text) > 400 else "")
