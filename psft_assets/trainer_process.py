"""The one way tests, benchmarks and pipelines launch the real trainer.

A run is ``python -m recipe.psft.main_psft [overrides]`` in a subprocess, exactly as a user runs it,
with its file log (verl's ``file`` logger) at a path the caller chooses. :func:`run_trainer_process`
runs it to the end; callers that need to signal or kill it mid-run build the same process from
:func:`trainer_command` and :func:`trainer_env`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TRAINER_MODULE = "recipe.psft.main_psft"


def trainer_command(overrides: list[str]) -> list[str]:
    """The command line of a trainer run with these Hydra overrides, on this interpreter."""
    return [sys.executable, "-m", TRAINER_MODULE, *overrides]


def trainer_env(file_log: Path, extra: dict[str, str] | None = None, local_ray: bool = True) -> dict[str, str]:
    """The environment of a trainer run: the file log at ``file_log``, Ray's per-worker log lines kept,
    and (``local_ray``) no ``RAY_ADDRESS``, so the run starts its own local Ray instead of joining one."""
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(file_log), "RAY_DEDUP_LOGS": "0", **(extra or {})}
    if local_ray:
        env.pop("RAY_ADDRESS", None)
    return env


def read_file_log(path: Path) -> list[dict]:
    """The entries of a file log (``{"step": ..., "data": {...}}`` per line); a partly written last line,
    as a running trainer may leave it, is skipped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


@dataclass
class TrainerProcess:
    """A finished trainer run: its exit code, console output and file log."""

    returncode: int
    output: str
    log: list[dict]


def run_trainer_process(
    overrides: list[str], cwd: Path, file_log: Path, timeout: float, env: dict[str, str] | None = None
) -> TrainerProcess:
    """Run the trainer to the end in ``cwd``; its console output is returned, its file log read back."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        trainer_command(overrides),
        cwd=cwd,
        env=trainer_env(file_log, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return TrainerProcess(proc.returncode, proc.stdout + proc.stderr, read_file_log(file_log))
