"""A ``psft`` config section with the recipe's defaults, for tests of the step plan and step metrics."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

STEP_DEFAULTS = {
    "loss_mode": "psft",
    "mini_batch_size": 2,
    "epochs": 1,
    "shuffle_mini_batches": True,
    "snapshot": "step",
    "skip_first_snapshot": True,
    "sft_warmup_steps": 0,
    "token_metrics": True,
    "batch_entropy": True,
    "update_token_metrics": False,
}


def psft_settings(**overrides) -> DictConfig:
    return OmegaConf.create({**STEP_DEFAULTS, **overrides})
