"""Entry point: ``python -m recipe.psft.main_psft [hydra overrides]``.

Joins the Ray cluster named by ``RAY_ADDRESS`` (``ray job submit``), otherwise starts a local one.
The config and the training data are validated before Ray starts.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .config_checks import ConfigError, check_config
from .dataset import DataError
from .verl_adapters.cpu_platform import apply_cpu_defaults


def run_psft(config: DictConfig) -> dict | None:
    """Validate, build the trainer (data first, then Ray and the FSDP workers), train."""
    import ray
    from verl.utils.device import auto_set_device

    from .psft_trainer import PSFTTrainer

    if not apply_cpu_defaults(config):
        auto_set_device(config)
    check_config(config)
    started_ray = not ray.is_initialized()
    try:
        trainer = PSFTTrainer(config=config)
        return trainer.fit()
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()


@hydra.main(config_path="config", config_name="psft_trainer", version_base=None)
def main(config: DictConfig) -> None:
    try:
        run_psft(config)
    except (ConfigError, DataError) as exc:
        print(f"[psft] error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
