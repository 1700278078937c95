"""Helpers for tests that run the real trainer: overrides, a subprocess runner, log access."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    returncode: int
    output: str
    log: list[dict]
    ckpt_dir: Path

    def series(self, key: str) -> list[float]:
        return [entry["data"][key] for entry in self.log if key in entry["data"]]

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
    if not log_path.exists():
        return []
    steps = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "train/loss" in entry["data"]:
            steps.append(entry["step"])
    return steps


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


def run_trainer(out: Path, overrides: list[str], timeout: int = 420) -> Run:
    """Run ``python -m recipe.psft.main_psft`` for real (Ray, 2 FSDP workers) and read its file log."""
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "metrics.jsonl"
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(log_path), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.psft.main_psft", *overrides],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    log = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    return Run(proc.returncode, output, log, out / "ckpt")


def assert_ok(run: Run) -> None:
    assert run.returncode == 0, run.output[-6000:]
