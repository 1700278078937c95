"""Seconds from `python -m recipe.psft.main_psft ...` to its first logged training step.

Builds the tiny random model and a toy data set, launches the real entry point (local Ray, FSDP
workers), and watches the file log: start-up cost is what a user waits before training begins.

    python benchmarks/time_to_first_step.py [--workers 2] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    from psft_assets.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="psft_first_step_"))
    model = build_tiny_model(work / "model")
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "demonstration": f"{i} + {i} = {2 * i}."}
        for i in range(16)
    ]
    pd.DataFrame(rows).to_parquet(work / "train.parquet")

    first_step, total = [], []
    for run in range(args.runs):
        log = work / f"log{run}.jsonl"
        env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(log)}
        env.pop("RAY_ADDRESS", None)
        command = [
            sys.executable, "-m", "recipe.psft.main_psft", f"model.path={model}",
            f"data.train_files={work / 'train.parquet'}", "data.train_batch_size=8", "psft.mini_batch_size=4",
            f"trainer.n_gpus_per_node={args.workers}", "trainer.total_training_steps=2",
            "trainer.logger=[console,file]", f"trainer.default_local_dir={work / f'ckpt{run}'}",
            "checkpoint.save_contents=[model,optimizer,extra]",
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=work)
        seen = None
        while proc.poll() is None:
            if seen is None and log.is_file() and log.stat().st_size > 0:
                seen = time.perf_counter() - start
            time.sleep(0.05)
        if proc.returncode:
            raise SystemExit(f"run {run} failed with exit code {proc.returncode}")
        first_step.append(seen)
        total.append(time.perf_counter() - start)
        print(
            f"run {run + 1}: first step logged after {seen:.1f} s; whole run (2 steps + checkpoint) {total[-1]:.1f} s"
        )
    print(f"median command -> first step: {statistics.median(first_step):.1f} s ({args.workers} workers)")


if __name__ == "__main__":
    main()
