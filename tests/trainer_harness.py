"""The one way tests launch the real trainer (``python -m recipe.psft.main_psft``), plus log and checkpoint access.

``Trainer`` starts the process in its own session (a test can signal the driver alone, kill a worker, or
kill the whole tree with its local Ray); ``run_trainer`` runs it to the end. Every run writes its file log
to ``run_dir/metrics.jsonl`` (kept across reruns in the same folder, as a user's would be) and its
console output to ``run_dir/output_<ns>.txt``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from psft_assets.trainer_process import read_file_log, trainer_command, trainer_env

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """A finished trainer process. ``log`` is the file log as it was when the process ended."""

    returncode: int
    output: str
    log: list[dict]
    ckpt_dir: Path
    seconds: float = 0.0
    events: dict[str, float] = field(default_factory=dict)

    def series(self, key: str) -> list[float]:
        return [entry["data"][key] for entry in self.log if key in entry["data"]]

    def train_steps(self) -> list[int]:
        return [entry["step"] for entry in self.log if "train/loss" in entry["data"]]

    def checkpoints(self) -> list[str]:
        return sorted(p.name for p in self.ckpt_dir.glob("global_step_*"))

    def tracker(self) -> int | None:
        tracker = self.ckpt_dir / "latest_checkpointed_iteration.txt"
        return int(tracker.read_text()) if tracker.exists() else None

    def final_weights(self) -> dict:
        return final_weights(self.ckpt_dir)


def final_weights(ckpt_dir: Path) -> dict:
    """The HF weights of the checkpoint the tracker names (the run's latest)."""
    from safetensors.torch import load_file

    latest = (ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip()
    return load_file(str(ckpt_dir / f"global_step_{latest}" / "huggingface" / "model.safetensors"))


def logged_train_steps(log_path: Path) -> list[int]:
    """Steps with a ``train/loss`` entry in a file log, read while it may still be written
    (a partly written last line is skipped)."""
    return [entry["step"] for entry in read_file_log(log_path) if "train/loss" in entry["data"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_sockets(pid: int) -> dict[str, str]:
    """{address:port: process title} of every TCP socket a process tree listens on."""
    import psutil

    root = psutil.Process(pid)
    found = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
            title = "driver" if proc.pid == pid else " ".join(proc.cmdline())[:60]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found.update({f"{c.laddr.ip}:{c.laddr.port}": title for c in conns if c.status == psutil.CONN_LISTEN})
    return found


def base_overrides(model: Path, train: Path, out: Path) -> list[str]:
    """A fast, deterministic tiny-model run on 2 FSDP ranks."""
    return [
        f"model.path={model}",
        f"data.train_files={train}",
        "data.val_files=null",
        "data.max_length=512",
        "data.train_batch_size=8",
        "data.micro_batch_size_per_gpu=2",
        "data.max_token_len_per_gpu=2048",
        "psft.mini_batch_size=8",
        "trainer.n_gpus_per_node=2",
        "trainer.total_training_steps=3",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={out / 'ckpt'}",
        "optim.lr=1e-3",
        "optim.lr_warmup_steps=0",
        "model.enable_gradient_checkpointing=false",
    ]


_LIVE: set[Trainer] = set()


class Trainer:
    """One ``main_psft`` process in ``run_dir`` (its own session), output to a file, file log beside it."""

    def __init__(self, run_dir: Path, args: list[str], env: dict[str, str] | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.log_path = run_dir, run_dir / "metrics.jsonl"
        self.output_path = run_dir / f"output_{time.time_ns()}.txt"
        full_env = trainer_env(self.log_path, env)
        self.started = time.monotonic()
        self.events: dict[str, float] = {}
        with open(self.output_path, "w") as output:
            self.proc = subprocess.Popen(
                trainer_command(args),
                cwd=run_dir,
                env=full_env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)

    def logged_steps(self) -> list[int]:
        return logged_train_steps(self.log_path)

    def wait_until(self, condition, what: str, timeout: float = 400) -> None:
        """Poll ``condition()`` until true; fail naming ``what`` if the trainer exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited {self.proc.returncode} before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def wait_for_step(self, step: int, timeout: float = 400) -> None:
        self.wait_until(lambda: step in self.logged_steps(), f"step {step}", timeout)

    def signal(self, signum: int) -> None:
        self.events.setdefault("fault", time.monotonic())
        os.kill(self.proc.pid, signum)

    def workers(self) -> list:
        """The Ray TrainingWorker processes of this run (children of its local Ray)."""
        import psutil

        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [p for p in children if "TrainingWorker" in " ".join(p.cmdline())]

    def listening_sockets(self) -> dict[str, str]:
        """{host:port: process title} of every TCP socket this run's processes listen on."""
        return listening_sockets(self.proc.pid)

    def tail(self) -> str:
        return self.output_path.read_text()[-6000:]

    def kill(self) -> None:
        """SIGKILL the whole session (driver, local Ray, workers)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        _LIVE.discard(self)

    def finish(self, timeout: float = 420) -> Run:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"trainer still running after {timeout} s (hang):\n{self.tail()}") from None
        except BaseException:  # e.g. pytest-timeout's interruption: never leave a trainer and its Ray behind
            self.kill()
            raise
        _LIVE.discard(self)
        ended = time.monotonic()
        self.events["exit"] = ended
        log = [json.loads(line) for line in self.log_path.read_text().splitlines()] if self.log_path.exists() else []
        return Run(
            self.proc.returncode,
            self.output_path.read_text(),
            log,
            self.run_dir / "ckpt",
            ended - self.started,
            self.events,
        )


def run_trainer(run_dir: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 420) -> Run:
    """Run ``python -m recipe.psft.main_psft`` for real (local Ray, FSDP workers) to the end."""
    return Trainer(run_dir, args, env).finish(timeout)


def stop_leftover_trainers() -> list[int]:
    """Kill every trainer a test started and left running (a failed or timed-out test); their pids."""
    left = [t for t in list(_LIVE) if t.proc.poll() is None]
    for trainer in list(_LIVE):
        trainer.kill()
    return [t.proc.pid for t in left]


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


def assert_same_series(result: Run, reference: Run, keys=("train/loss", "train/grad_norm")) -> None:
    """The logged per-step values equal the reference run's exactly (a resume changes no number)."""
    for key in keys:
        assert result.series(key) == reference.series(key), (key, result.series(key), reference.series(key))


def assert_ok(run: Run) -> None:
    assert run.returncode == 0, run.output[-6000:]
