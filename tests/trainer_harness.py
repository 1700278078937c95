"""Helpers for tests that run the real trainer: toy data, overrides, a subprocess runner, log access."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def make_rows(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    """Toy arithmetic demonstrations of varied length, in prepare_data.py's output layout."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        steps = " ".join(f"Step {j}: {a} + {j} = {a + j}." for j in range(rng.randint(1, 6)))
        if long_every and i % long_every == 0:
            steps = steps * 8
        rows.append(
            {
                "data_source": "toy_add",
                "prompt": [
                    {"role": "system", "content": "Please reason step by step."},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                ],
                "demonstration": f"{steps} So {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.",
                "ability": "math",
                "reward_model": {"ground_truth": str(a + b), "style": "rule"},
                "extra_info": {"split": "train", "index": i},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


@dataclass
class Run:
    returncode: int
    output: str
    log: list[dict]
    ckpt_dir: Path

    def series(self, key: str) -> list[float]:
        return [entry["data"][key] for entry in self.log if key in entry["data"]]

    def final_weights(self) -> dict:
        from safetensors.torch import load_file

        latest = (self.ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip()
        return load_file(str(self.ckpt_dir / f"global_step_{latest}" / "huggingface" / "model.safetensors"))


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
