"""Checks on a PSFT config that must pass before Ray starts, with messages that say what to change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .dataset import TRUNCATION_MODES
from .losses import check_loss_settings


class ConfigError(ValueError):
    """A config value that cannot work, named with its key and the fix."""


def world_size(config: Any) -> int:
    """Data-parallel ranks of a run: ``trainer.nnodes x trainer.n_gpus_per_node``."""
    return int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)


def _files(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def check_config(config: Any) -> None:
    """Raise ConfigError for the first problem found in ``config`` (an OmegaConf DictConfig)."""
    psft, data, trainer = config.psft, config.data, config.trainer

    try:
        check_loss_settings(str(psft.loss_mode), str(psft.loss_agg_mode), str(psft.kl_estimator))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if psft.snapshot not in ("step", "initial"):
        raise ConfigError(f"psft.snapshot={psft.snapshot!r}: expected step or initial")
    if psft.snapshot == "initial" and psft.loss_mode != "psft":
        raise ConfigError(
            f"psft.snapshot=initial sets PSFT's old policy, but psft.loss_mode={psft.loss_mode}: "
            "use psft.loss_mode=psft, or psft.snapshot=step"
        )
    if float(psft.kl_coef) < 0:
        raise ConfigError(f"psft.kl_coef={psft.kl_coef}: must be >= 0 (the paper's SFT-KL uses 0.5)")
    if psft.update_token_metrics and config.model.get("use_fused_kernels", False):
        raise ConfigError(
            "psft.update_token_metrics=true needs the logits of training forwards, which "
            "model.use_fused_kernels=true never materialises: turn one of them off"
        )

    batch, mini = int(data.train_batch_size), int(psft.mini_batch_size)
    if batch <= 0 or mini <= 0:
        raise ConfigError(f"data.train_batch_size={batch} and psft.mini_batch_size={mini} must be positive")
    if batch % mini:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise ConfigError(
            f"psft.mini_batch_size={mini} does not divide data.train_batch_size={batch}: "
            f"choose a mini-batch size from {divisors}"
        )
    dp_size = world_size(config)
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
    if not high > 0.0:  # NaN fails too; inf is the no-clip ablation (the importance-weighted objective)
        raise ConfigError(f"psft.clip_ratio_high={high}: must be > 0 (the paper uses 0.28; inf: no clip)")

    max_nonfinite = int(psft.get("max_nonfinite", 3))
    if max_nonfinite < 1:
        raise ConfigError(f"psft.max_nonfinite={max_nonfinite}: must be >= 1 (the run stops at that many)")
    if float(psft.get("save_interval_minutes", 0) or 0) < 0:
        raise ConfigError(f"psft.save_interval_minutes={psft.save_interval_minutes}: must be >= 0 (0 disables)")

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


def check_sizes(config: Any, train_rows: int, val_rows: int | None) -> None:
    """Row counts against batch sizes, checked on the tokenised data before Ray and the model start.

    Without this, too few training rows make an empty loader (zero steps, or a division by zero in
    the step count) and too few validation rows an empty validation pass hours into the run.
    """
    batch = int(config.data.train_batch_size)
    files = ", ".join(_files(config.data.get("train_files")))
    if train_rows < batch:
        raise ConfigError(
            f"data.train_files ({files}) has {train_rows} usable rows, fewer than data.train_batch_size={batch}: "
            f"lower data.train_batch_size to at most {train_rows} or add rows"
        )
    if val_rows is None:
        return
    dp_size = world_size(config)
    if val_rows < dp_size:
        raise ConfigError(
            f"data.val_files ({', '.join(_files(config.data.get('val_files')))}) has {val_rows} usable rows, fewer "
            f"than the data-parallel size {dp_size} (trainer.nnodes x trainer.n_gpus_per_node): every rank needs "
            f"a validation row; add rows or pass data.val_files=null"
        )
