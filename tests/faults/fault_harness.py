"""Run the real trainer as a user would, and inject faults into it from outside.

The trainer runs as ``python -m recipe.psft.main_psft`` in its own session (so a test can signal the
driver alone, or kill a worker), with a local Ray, 2 FSDP CPU ranks and the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from trainer_harness import final_weights, listening_sockets, logged_train_steps

# One configuration for every fault: 4 steps over train24 (3 steps per epoch, so a resume crosses an
# epoch boundary), k = 2 shuffled updates per step, a checkpoint every step, 2 kept.
FAULT_OVERRIDES = [
    "data.val_files=null",
    "data.max_length=512",
    "data.train_batch_size=8",
    "data.micro_batch_size_per_gpu=2",
    "data.max_token_len_per_gpu=2048",
    "psft.mini_batch_size=4",
    "psft.shuffle_mini_batches=true",
    "trainer.n_gpus_per_node=2",
    "trainer.total_training_steps=4",
    "trainer.save_freq=1",
    "trainer.max_ckpt_to_keep=2",
    "trainer.logger=[console,file]",
    "optim.lr=1e-3",
    "optim.lr_warmup_steps=0",
    "model.enable_gradient_checkpointing=false",
]


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    log_path: Path
    ckpt_dir: Path
    events: dict[str, float] = field(default_factory=dict)

    @property
    def log(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def train_steps(self) -> list[int]:
        return [entry["step"] for entry in self.log if "train/loss" in entry["data"]]

    def checkpoints(self) -> list[str]:
        return sorted(p.name for p in self.ckpt_dir.glob("global_step_*"))

    def tracker(self) -> int | None:
        tracker = self.ckpt_dir / "latest_checkpointed_iteration.txt"
        return int(tracker.read_text()) if tracker.exists() else None

    def final_weights(self) -> dict:
        return final_weights(self.ckpt_dir)


def overrides(model: Path, train: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"data.train_files={train}", f"trainer.default_local_dir={run_dir / 'ckpt'}"] + [
        *FAULT_OVERRIDES,
        *extra,
    ]


class Trainer:
    """One ``main_psft`` process; the log is ``run_dir/metrics.jsonl`` across reruns (as a user's would be)."""

    def __init__(self, run_dir: Path, args: list[str], env: dict[str, str] | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.log_path = run_dir, run_dir / "metrics.jsonl"
        self.output_path = run_dir / f"output_{time.time_ns()}.txt"
        full_env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(self.log_path), "RAY_DEDUP_LOGS": "0", **(env or {})}
        full_env.pop("RAY_ADDRESS", None)
        self.started = time.monotonic()
        self.events: dict[str, float] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recipe.psft.main_psft", *args],
            cwd=run_dir,
            env=full_env,
            stdout=open(self.output_path, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def logged_steps(self) -> list[int]:
        return logged_train_steps(self.log_path)

    def wait_for_step(self, step: int, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while step not in self.logged_steps():
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited {self.proc.returncode} before step {step}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no step {step} after {timeout} s:\n{self.tail()}")
            time.sleep(0.2)

    def signal(self, signum: int) -> None:
        self.events.setdefault("fault", time.monotonic())
        os.kill(self.proc.pid, signum)

    def workers(self) -> list[psutil.Process]:
        """The Ray TrainingWorker processes of this run (children of its local Ray)."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [p for p in children if "TrainingWorker" in " ".join(p.cmdline())]

    def listening_sockets(self) -> dict[str, str]:
        """{host:port: process title} of every TCP socket this run's processes listen on."""
        return listening_sockets(self.proc.pid)

    def tail(self) -> str:
        return self.output_path.read_text()[-6000:]

    def finish(self, timeout: float = 420) -> Run:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"trainer still running after {timeout} s (hang):\n{self.tail()}") from None
        ended = time.monotonic()
        self.events["exit"] = ended
        return Run(
            self.proc.returncode,
            self.output_path.read_text(),
            ended - self.started,
            self.log_path,
            self.run_dir / "ckpt",
            self.events,
        )


def run(run_dir: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 420) -> Run:
    return Trainer(run_dir, args, env).finish(timeout)


def seconds_to_exit(result: Run) -> float:
    """Seconds from the injected fault to the process exit."""
    return result.events["exit"] - result.events["fault"]


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def assert_continuous_log(result: Run, last_step: int) -> None:
    """Each training step logged exactly once, in order, none missing: one continuous record."""
    assert result.train_steps() == list(range(1, last_step + 1)), result.train_steps()
