"""Entry point: ``python -m recipe.psft.main_psft [hydra overrides]``.

Joins the Ray cluster named by ``RAY_ADDRESS`` (``ray job submit``), otherwise starts a local one.
Before Ray starts: the config is validated, the checkpoint to resume is chosen and its recorded run
identity compared with this config, and the training data is tokenised and checked.

Exit codes are listed in :mod:`recipe.psft.exit_codes` (0 done, 2 bad input or changed run, 3 diverged,
4 checkpoint problem, 5 lost worker/node, 130/143 stopped by SIGINT/SIGTERM after checkpointing).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .checkpoints import resolve_resume
from .config_checks import ConfigError, check_config
from .dataset import DataError
from .exit_codes import BAD_INPUT, RunStopped
from .preemption import PreemptionGuard
from .run_identity import check_resume, run_identity
from .verl_adapters.cpu_platform import apply_cpu_defaults


def run_psft(config: DictConfig, preemption: PreemptionGuard | None = None) -> dict | None:
    """Validate, check the resume, build the trainer (data first, then Ray and the FSDP workers), train."""
    import ray
    from verl.utils.device import auto_set_device

    from .psft_trainer import PSFTTrainer

    if not apply_cpu_defaults(config):
        auto_set_device(config)
    check_config(config)
    trainer_cfg = config.trainer
    plan = resolve_resume(
        trainer_cfg.default_local_dir, trainer_cfg.get("resume_mode", "auto"), trainer_cfg.get("resume_from_path")
    )
    identity = run_identity(config)
    allowed = [str(k) for k in config.psft.get("resume_allow_changes", None) or []]
    accepted = check_resume(plan.run_identity, identity, allowed, str(plan.path))
    if accepted:
        print(f"[psft] resuming {plan.path} with changed {accepted} (psft.resume_allow_changes)", file=sys.stderr)
    if plan.path is not None:
        print(f"[psft] resuming from {plan.path} (step {plan.step})", file=sys.stderr, flush=True)
    started_ray = not ray.is_initialized()
    try:
        trainer = PSFTTrainer(config=config, resume_plan=plan, identity=identity, preemption=preemption)
        return trainer.fit()
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()


@hydra.main(config_path="config", config_name="psft_trainer", version_base=None)
def main(config: DictConfig) -> None:
    guard = PreemptionGuard()
    guard.install()
    try:
        run_psft(config, preemption=guard)
    except (ConfigError, DataError) as exc:
        print(f"[psft] error: {exc}", file=sys.stderr)
        sys.exit(BAD_INPUT)
    except RunStopped as exc:
        print(f"[psft] {'done' if exc.exit_code == 0 else 'stopped'}: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    finally:
        guard.uninstall()


if __name__ == "__main__":
    main()
