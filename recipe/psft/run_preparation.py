"""Everything decided about a run before its trainer is built, once: the one door to a prepared run.

:func:`prepare_run` fills in the device settings, validates the config, chooses the checkpoint to
resume and compares its recorded run identity with this config. ``main_psft``, the benchmarks and
the tests all go through it, so the trainer never decides any of this again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .checkpoints import ResumePlan, resolve_resume
from .config_checks import check_config
from .run_identity import check_resume, run_identity


@dataclass(frozen=True)
class PreparedRun:
    """The checkpoint a run resumes from (or none) and the run identity its checkpoints record."""

    resume_plan: ResumePlan
    identity: dict[str, Any]


def prepare_run(config: Any) -> PreparedRun:
    """Device defaults, config checks, the resume plan and its identity check (ConfigError /
    ResumeMismatch on failure). Mutates ``config`` only to fill in the device settings."""
    from verl.utils.device import auto_set_device

    from .verl_adapters.cpu_platform import apply_cpu_defaults

    if not apply_cpu_defaults(config):
        auto_set_device(config)
    check_config(config)
    trainer = config.trainer
    plan = resolve_resume(
        trainer.default_local_dir, trainer.get("resume_mode", "auto"), trainer.get("resume_from_path")
    )
    identity = run_identity(config)
    allowed = [str(k) for k in config.psft.get("resume_allow_changes", None) or []]
    accepted = check_resume(plan.run_identity, identity, allowed, str(plan.path))
    if accepted:
        print(f"[psft] resuming {plan.path} with changed {accepted} (psft.resume_allow_changes)", file=sys.stderr)
    if plan.path is not None:
        print(f"[psft] resuming from {plan.path} (step {plan.step})", file=sys.stderr, flush=True)
    return PreparedRun(plan, identity)
