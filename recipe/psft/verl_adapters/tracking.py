"""verl's ``Tracking``, made to keep the file log of the steps a resumed run already did."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from verl.utils.tracking import Tracking


def file_log_path(config: Any) -> Path:
    """Where verl's file logger writes (the same rule as ``verl.utils.tracking.FileLogger``)."""
    path = os.getenv("VERL_FILE_LOGGER_PATH")
    if path:
        return Path(path)
    root = Path(os.path.expanduser(os.getenv("VERL_FILE_LOGGER_ROOT", ".")))
    return root / config.trainer.project_name / f"{config.trainer.experiment_name}.jsonl"


def make_tracking(config: Any, resume_step: int) -> Tracking:
    """verl's Tracking for ``config``, keeping the file log of the steps up to ``resume_step``.

    verl's file logger truncates its file on open; on resume we write back the lines up to the
    resumed step (through the logger's open file) so the log stays one continuous record of the run.
    """
    kept: list[bytes] = []
    log_path = file_log_path(config)
    if resume_step > 0 and "file" in config.trainer.logger and log_path.is_file():
        for line in log_path.read_bytes().splitlines():
            try:
                if json.loads(line)["step"] <= resume_step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue
    tracking = Tracking(
        project_name=config.trainer.project_name,
        experiment_name=config.trainer.experiment_name,
        default_backend=config.trainer.logger,
        config=OmegaConf.to_container(config, resolve=True),
    )
    if kept:
        tracking.logger["file"].fp.write(b"\n".join(kept) + b"\n")
    return tracking
