"""Everything decided about a run before its trainer is built, once: the one door to a prepared run.

:func:`prepare_run` fills in the device settings, validates the config, chooses the checkpoint to
resume and compares its recorded run identity with this config. ``main_psft``, the benchmarks and
the tests all go through it, so the trainer never decides any of this again.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import folder_lock
from .checkpoints import (
    ResumePlan,
    check_trusted,
    drop_shared_write,
    new_lineage,
    read_run_record,
    resolve_resume,
    write_run_record,
)
from .config_checks import ConfigError, check_config
from .run_identity import check_resume, run_identity

# Set in the entrypoint's environment by Ray's job supervisor (``ray job submit``; Ray 2.60 strips
# RAY_JOB_ID from it), and RAY_JOB_ID in every process a Ray job starts.
_RAY_JOB_MARKERS = ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID")


def checkpoint_dir(config: Any) -> Path:
    """``trainer.default_local_dir`` as an absolute path.

    A relative path is resolved against ``psft.checkpoint_root`` when set. Otherwise, under a Ray job
    (its working directory is Ray's temporary copy of the code, replaced by the next submit) or on
    several nodes (each resolves it against its own working directory), it is refused: the next run
    would silently start from step 0. On one node outside a job it is resolved against the working
    directory, as before.
    """
    value = os.path.expanduser(str(config.trainer.default_local_dir))
    if os.path.isabs(value):
        return Path(value)
    root = config.psft.get("checkpoint_root")
    if root:
        root = os.path.expanduser(str(root))
        if not os.path.isabs(root):
            raise ConfigError(f"psft.checkpoint_root={root}: expected an absolute path (a folder every node sees)")
        return Path(root) / value
    job = next((name for name in _RAY_JOB_MARKERS if os.environ.get(name)), None)
    nnodes = int(config.trainer.get("nnodes", 1) or 1)
    if job or nnodes > 1:
        where = f"this run is a Ray job ({job} is set)" if job else f"trainer.nnodes={nnodes}"
        raise ConfigError(
            f"trainer.default_local_dir={config.trainer.default_local_dir} is relative and {where}: it would be "
            f"resolved against {os.getcwd()}"
            + (", Ray's temporary copy of the code, so the next submit would start from step 0" if job else "")
            + ". Pass an absolute folder on a filesystem every node shares, e.g. trainer.default_local_dir="
            "/shared/checkpoints/..., or psft.checkpoint_root=/shared/checkpoints to resolve relative ones there."
        )
    return Path(value).resolve()


@dataclass(frozen=True)
class PreparedRun:
    """The checkpoint a run resumes from (or none) and the run identity its checkpoints record."""

    resume_plan: ResumePlan
    identity: dict[str, Any]
    lease: folder_lock.FolderLease | None = None  # held until release() or the process ends

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


def prepare_run(config: Any) -> PreparedRun:
    """Device defaults, config checks, the folder lock, the resume plan and its checks (ConfigError,
    FolderLocked, CheckpointError or ResumeMismatch on failure). Mutates ``config`` to fill in the
    device settings and make ``trainer.default_local_dir`` absolute."""
    from verl.utils.device import auto_set_device

    from .verl_adapters.cpu_platform import apply_cpu_defaults

    if not apply_cpu_defaults(config):
        auto_set_device(config)
    check_config(config)
    trainer, psft = config.trainer, config.psft
    root = checkpoint_dir(config)
    trainer.default_local_dir = str(root)  # every process of the run (and the handler) sees one folder
    allow_shared = bool(psft.get("allow_shared_writable_checkpoints", False))
    check_trusted(root, allow_shared, recursive=False)
    created = not root.exists()
    lease = folder_lock.acquire(root, float(psft.get("lock_lease_seconds", folder_lock.DEFAULT_LEASE_S)))
    if created:
        drop_shared_write(root)  # a umask of 002 must not make the next start refuse its own folder
    plan = resolve_resume(str(root), trainer.get("resume_mode", "auto"), trainer.get("resume_from_path"))
    if plan.path is not None:
        check_trusted(plan.path, allow_shared)
    identity = run_identity(config)
    allowed = [str(k) for k in psft.get("resume_allow_changes", None) or []]
    accepted = check_resume(plan.run_identity, identity, allowed, str(plan.path))
    if accepted:
        print(f"[psft] resuming {plan.path} with changed {accepted} (psft.resume_allow_changes)", file=sys.stderr)
    if plan.path is not None:
        print(f"[psft] resuming from {plan.path} (step {plan.step})", file=sys.stderr, flush=True)
    else:
        print(f"[psft] no checkpoint to resume in {root}: starting at step 0", file=sys.stderr, flush=True)
    # A resume continues its checkpoint's lineage (or the folder's, for checkpoints written before
    # lineages); a start from step 0 begins a new one.
    recorded = (plan.manifest or {}).get("lineage") or (read_run_record(root).get("lineage") if plan.path else None)
    plan.lineage = recorded or new_lineage()
    write_run_record(root, plan.lineage, None if plan.path is None else str(plan.path))
    return PreparedRun(plan, identity, lease)
