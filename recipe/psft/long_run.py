"""What keeps a long run's work: preemption, divergence, when to save, and lost workers.

:class:`LongRunGuard` owns these for the trainer's loop. Per step, the loop asks it three things:
``after_update`` (count non-finite updates), ``after_step`` (undo the LR-schedule step of a step with
a skipped update, and report the count) and ``end_of_step`` (save if due, then stop if a signal asked
for it). ``worker_failures`` turns Ray's errors about dead processes into :class:`WorkerLost`, naming
the dead workers and the last checkpoint. The README's "Long runs" section is the user's side of it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checkpoints import INTERVAL, MILESTONE, ResumePlan, save_kind
from .divergence import DivergenceGuard
from .exit_codes import AlreadyFinished, Diverged, Preempted, WorkerLost
from .preemption import PreemptionGuard


class LongRunGuard:
    """Preemption, divergence, the save policy and lost workers of one run."""

    def __init__(self, config: Any, resume_plan: ResumePlan, preemption: PreemptionGuard | None = None):
        self.resume_plan = resume_plan
        self.ckpt_dir = config.trainer.default_local_dir
        self.save_interval_s = float(config.psft.get("save_interval_minutes", 0) or 0) * 60
        # A guard passed in (main_psft's, installed before the data is read) stays installed until the
        # caller removes it, so a second signal during Ray's shutdown still exits at once.
        self._owns_preemption = preemption is None
        self.preemption = preemption or PreemptionGuard()
        self.divergence = DivergenceGuard(int(config.psft.get("max_nonfinite", 3)))

    @property
    def stop_requested(self) -> bool:
        return self.preemption.requested

    def check_not_finished(self, total_steps: int) -> None:
        """Refuse (exit 0, said so) a run whose checkpoint already reached the configured end."""
        plan = self.resume_plan
        if plan.path is not None and plan.step >= total_steps:
            raise AlreadyFinished(
                f"nothing to do: the checkpoint {plan.path} is at step {plan.step} and this run ends at "
                f"step {total_steps}. Its weights are in {Path(plan.path) / 'huggingface'}. "
                "Raise trainer.total_training_steps or trainer.total_epochs to train further."
            )

    def begin(self, step: int, save: Callable[[int], None], save_freq: int) -> None:
        """Start (or resume) the loop at ``step``; ``save(step)`` writes a checkpoint."""
        self.preemption.install()
        self._save, self.save_freq = save, save_freq
        self.first_step, self.current_step = step, step
        self.last_saved_step = step or None
        self._save_postponed, self._last_save_time = False, time.monotonic()
        self._postponed_kind = INTERVAL
        if self.preemption.requested:  # the signal came while the model and workers were being built
            self._stop_if_preempted(step)

    def after_update(self, step: int, update: int, worker_metrics: dict[str, Any]) -> None:
        self.divergence.check_update(step, update, worker_metrics)

    def after_step(self, step: int, metrics: dict[str, float], training_client: Any) -> None:
        """A step with a skipped update must not advance the LR schedule: step every worker's back."""
        if self.divergence.step_had_skips(step):
            from .verl_adapters.worker_control import rewind_lr_schedule

            metrics["train/lr"] = rewind_lr_schedule(training_client)
        metrics["train/nonfinite_updates"] = self.divergence.count

    def end_of_step(self, step: int, is_last_step: bool) -> None:
        """Save if due, then stop (raise :class:`Preempted`) if a signal asked for it."""
        if self._save_due(step, is_last_step):
            self._save_or_postpone(step, is_last_step)
        self._stop_if_preempted(step)

    def _save_due(self, step: int, is_last_step: bool) -> bool:
        if is_last_step or self.preemption.requested or self._save_postponed:
            return True
        if self.save_freq > 0 and step % self.save_freq == 0:
            return True
        return self.save_interval_s > 0 and time.monotonic() - self._last_save_time >= self.save_interval_s

    def _kind(self, step: int, is_last_step: bool) -> str:
        """A milestone (kept by retention, see checkpoints.apply_retention) when due by save_freq, final,
        or standing in for a milestone postponed by a skipped update; otherwise an interval save."""
        if is_last_step or (self.save_freq > 0 and step % self.save_freq == 0):
            return MILESTONE
        return self._postponed_kind if self._save_postponed else INTERVAL

    def _save_or_postpone(self, step: int, is_last_step: bool) -> None:
        """Checkpoint ``step`` unless it had a skipped update (then the next clean step saves)."""
        kind = self._kind(step, is_last_step)
        if self.divergence.step_had_skips(step):
            if is_last_step:
                raise Diverged(
                    f"the final step {step} had non-finite updates that the engine skipped: not saving it as the "
                    f"result. The last checkpoint is step {self.last_saved_step or 'none'}."
                )
            print(f"[psft] step {step} had a skipped update: its checkpoint moves to the next clean step", flush=True)
            self._save_postponed, self._postponed_kind = True, kind
            return
        with save_kind(kind):
            self._save(step)
        self.last_saved_step, self._save_postponed, self._last_save_time = step, False, time.monotonic()
        self._postponed_kind = INTERVAL

    def _stop_if_preempted(self, step: int) -> None:
        if not self.preemption.requested:
            return
        name = signal.Signals(self.preemption.signum).name
        if step == self.first_step:
            where = f"before its first step; the last checkpoint is step {step or 'none'}"
        elif self.last_saved_step == step:
            where = f"saved a checkpoint of step {step} in {self.ckpt_dir}"
        else:
            last = self.last_saved_step
            where = f"step {step} was not saved (it had a skipped update); the last checkpoint is step {last}"
        when = "" if step == self.first_step else f" after step {step}"
        raise Preempted(f"stopped by {name}{when}: {where}. Rerun the same command to resume.", self.preemption.signum)

    @contextmanager
    def worker_failures(self, training_client: Any) -> Iterator[None]:
        """Ray's errors about dead workers or nodes become :class:`WorkerLost` (exit 5), naming them."""
        import ray.exceptions

        try:
            yield
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.OutOfMemoryError,  # Ray's memory monitor killed a worker
        ) as exc:
            raise WorkerLost(self._lost_worker_message(training_client, exc, died=True)) from exc
        except ray.exceptions.RayTaskError as exc:
            # A surviving rank fails its collective when a peer dies: report the dead one if there is one.
            message = self._lost_worker_message(training_client, exc)
            if message is None:
                raise
            raise WorkerLost(message) from exc
        finally:
            if self._owns_preemption:
                self.preemption.uninstall()

    def _lost_worker_message(self, training_client: Any, exc: BaseException, died: bool = False) -> str | None:
        """Name the dead worker(s) and the step; None when nothing died (``died``: the error says it did)."""
        from .verl_adapters.worker_control import dead_workers

        dead = dead_workers(training_client)
        if not dead and not died:
            return None
        what = "; ".join(dead) if dead else " ".join(str(exc).split())[:400]
        last = getattr(self, "last_saved_step", None)
        resume = f"the last checkpoint is step {last}" if last else "no checkpoint was written yet"
        return (
            f"a training worker or its node died during step {getattr(self, 'current_step', 0)}: {what}. {resume}; "
            "rerun the same command once the cluster is whole again and it resumes from there."
        )
