"""Checks on a PSFT config that must pass before Ray starts, with messages that say what to change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .losses import LOSS_MODES

# verl's data.truncation policies (applied per row by the dataset).
TRUNCATION_MODES = ("error", "left", "right")


class ConfigError(ValueError):
    """A config value that cannot work, named with its key and the fix."""


def check_loss_mode(loss_mode: str) -> None:
    """psft.loss_mode must name one of the losses in ``losses.LOSS_MODES``."""
    if loss_mode not in LOSS_MODES:
        raise ConfigError(f"psft.loss_mode={loss_mode!r}: expected one of {', '.join(LOSS_MODES)}")


def _files(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def check_config(config: Any) -> None:
    """Raise ConfigError for the first problem found in ``config`` (an OmegaConf DictConfig)."""
    psft, data, trainer = config.psft, config.data, config.trainer

    check_loss_mode(psft.loss_mode)

    batch, mini = int(data.train_batch_size), int(psft.mini_batch_size)
    if batch <= 0 or mini <= 0:
        raise ConfigError(f"data.train_batch_size={batch} and psft.mini_batch_size={mini} must be positive")
    if batch % mini:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise ConfigError(
            f"psft.mini_batch_size={mini} does not divide data.train_batch_size={batch}: "
            f"choose a mini-batch size from {divisors}"
        )
    dp_size = int(trainer.nnodes) * int(trainer.n_gpus_per_node)
    for key, value in (("data.train_batch_size", batch), ("psft.mini_batch_size", mini)):
        if value % dp_size:
            raise ConfigError(
                f"{key}={value} is not divisible by the data-parallel size {dp_size} "
                f"(trainer.nnodes={trainer.nnodes} x trainer.n_gpus_per_node={trainer.n_gpus_per_node}): "
                f"use a multiple of {dp_size}"
            )
    if int(psft.epochs) < 1:
        raise ConfigError(f"psft.epochs={psft.epochs}: must be >= 1")
    if int(psft.sft_warmup_steps) < 0:
        raise ConfigError(f"psft.sft_warmup_steps={psft.sft_warmup_steps}: must be >= 0")

    low, high = float(psft.clip_ratio_low), float(psft.clip_ratio_high)
    if not 0.0 < low < 1.0:
        raise ConfigError(f"psft.clip_ratio_low={low}: must be in (0, 1) (the paper uses 0.2)")
    if high <= 0.0:
        raise ConfigError(f"psft.clip_ratio_high={high}: must be > 0 (the paper uses 0.28)")

    if data.get("truncation", "error") not in TRUNCATION_MODES:
        raise ConfigError(f"data.truncation={data.truncation!r}: expected one of {', '.join(TRUNCATION_MODES)}")
    if data.get("pad_mode", "no_padding") != "no_padding":
        raise ConfigError(f"data.pad_mode={data.pad_mode!r}: PSFT supports only no_padding (verl's default)")

    for key in ("train_files", "val_files"):
        files = _files(data.get(key))
        if key == "train_files" and not files:
            raise ConfigError("data.train_files is empty: pass data.train_files=/path/to/train.parquet")
        for file in files:
            if "://" in file:  # hdfs:// and friends: verl copies them itself
                continue
            if not Path(file).expanduser().is_file():
                raise ConfigError(
                    f"data.{key}: {file} does not exist; create it with "
                    f"`python prepare_data.py --output-dir DIR` or point data.{key} at your parquet file"
                )

    model_path = str(config.model.path)
    is_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", model_path) and not model_path.startswith((".", "~"))
    if "://" not in model_path and not is_hub_id and not Path(model_path).expanduser().exists():
        raise ConfigError(
            f"model.path={model_path} does not exist: pass a local Hugging Face model folder "
            "(or a Hub id such as Qwen/Qwen2.5-7B-Instruct on a machine with Hub access)"
        )
