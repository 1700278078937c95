"""Entry point: ``python -m recipe.psft.main_psft [hydra overrides]``.

Joins the Ray cluster named by ``RAY_ADDRESS`` (``ray job submit``), otherwise starts a local one.
Before Ray starts: the config is validated, the checkpoint to resume is chosen and its recorded run
identity compared with this config, and the training data is tokenised and checked.

Exit codes are listed in :mod:`recipe.psft.exit_codes` (0 done, 2 bad input or changed run, 3 diverged,
4 checkpoint problem, 5 lost worker/node, 130/143/138 stopped by SIGINT/SIGTERM/SIGUSR1 after checkpointing).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .exit_codes import BAD_INPUT, RunStopped
from .preemption import PreemptionGuard, tolerate_broken_pipes

# What a run needs (verl, torch, Ray: seconds of imports) is imported when the run starts, so that
# `--help` and `--cfg job` print without it.


def run_psft(config: DictConfig, preemption: PreemptionGuard | None = None) -> dict | None:
    """Prepare the run (config checks, resume plan), build the trainer (data first, then Ray and the
    FSDP workers), train."""
    import ray

    from .psft_trainer import PSFTTrainer
    from .run_preparation import prepare_run

    run = prepare_run(config)
    started_ray = not ray.is_initialized()
    try:
        return PSFTTrainer(config=config, run=run, preemption=preemption).fit()
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()


@hydra.main(config_path="config", config_name="psft_trainer", version_base=None)
def main(config: DictConfig) -> None:
    from .config_checks import ConfigError
    from .dataset import DataError

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
    tolerate_broken_pipes()  # before Hydra's logging binds sys.stdout: a closed `| tee` ends no run
    main()
