"""verl's ``CheckpointHandler`` with the save and resume rules of :mod:`recipe.psft.checkpoints`.

Overrides two of its methods (one private, hence here among the verl adapters):

* ``_determine_resume_path``: the checkpoint chosen before Ray started (a
  :class:`~recipe.psft.checkpoints.ResumePlan`: the tracker's if complete, else the newest complete one);
* ``save_checkpoint``: engine files, then the dataloader state, then fsync + manifest (with the run
  identity), and only then the tracker; the engine is never asked to delete old checkpoints (retention
  is counted on disk here instead); a failed save removes its partial folder and raises CheckpointError
  naming the folder and the error, leaving the previous checkpoint the latest.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from verl.utils import hdfs_io
from verl.utils.checkpoint import CheckpointHandler

from ..checkpoints import ResumePlan, apply_retention, read_tracker, step_dir, write_manifest, write_tracker
from ..exit_codes import CheckpointError


def _is_ray_failure(exc: BaseException) -> bool:
    """A lost worker or node: reported as such by the trainer, not as a failed save."""
    import ray.exceptions

    lost = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError)
    return isinstance(exc, lost)


def _free_space(root: Path) -> str:
    # torch.save reports a full disk as "unexpected pos ...": say how much room there is.
    try:
        return f"{shutil.disk_usage(root).free / 2**20:.1f} MiB free on the filesystem of {root}"
    except OSError as exc:
        return f"free space of {root} unknown: {exc}"


class TrustedCheckpointHandler(CheckpointHandler):
    def __init__(self, *args: Any, resume_plan: ResumePlan, run_identity: dict[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.resume_plan = resume_plan
        self.run_identity = run_identity

    def _determine_resume_path(self) -> str | None:
        return None if self.resume_plan.path is None else str(self.resume_plan.path)

    def save_checkpoint(self, step: int) -> None:
        root = Path(self.default_local_dir)
        folder = step_dir(root, step)
        print(f"Saving checkpoint to: {folder}", flush=True)
        try:
            if folder.exists():  # left by an earlier attempt at this step (a crash, or an abandoned branch)
                shutil.rmtree(folder)
            self.engine.save_checkpoint(local_path=str(folder), global_step=step, max_ckpt_to_keep=None)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.train_dataloader.state_dict(), folder / f"data_{self.dp_rank}.pt")
            write_manifest(folder, step, self.run_identity)
            write_tracker(root, step)
        except Exception as exc:
            if _is_ray_failure(exc):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            previous, _ = read_tracker(root)
            kept = f"the previous checkpoint {step_dir(root, previous)} is intact" if previous else "none earlier"
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise CheckpointError(
                f"saving the checkpoint of step {step} to {folder} failed: {type(exc).__name__}: {detail} "
                f"({_free_space(root)}). Removed the partial folder; {kept}. Free space or fix the folder, "
                "then rerun the same command."
            ) from exc
        print(f"Checkpoint of step {step} complete: {folder}", flush=True)
        if self.default_hdfs_dir:
            hdfs_io.makedirs(self.default_hdfs_dir, exist_ok=True)
            hdfs_io.copy(src=str(folder), dst=self.default_hdfs_dir, dirs_exist_ok=True)
        for removed in apply_retention(root, self.max_ckpt_to_keep, protect=step):
            print(f"[psft] removed {removed} (trainer.max_ckpt_to_keep={self.max_ckpt_to_keep})", file=sys.stderr)
