"""One short tiny-model run of every loss mode and ablation, and a table of their last step.

Each run is the real trainer (``python -m recipe.psft.main_psft``: Ray, FSDP workers) on a random
tiny Qwen2 and toy demonstrations, with ``psft.log_kl=true`` so every run logs its KL to the initial
model. A smoke comparison of the modes' mechanics (does the KL grow, does the trust region clip), not
of their merit: the model is random and the runs are a few steps long.

    python -m benchmarks.modes_table                 # 16 rows, batch 8, k = 4, 3 steps, 2 CPU ranks
    python -m benchmarks.modes_table --steps 6 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {
    "SFT": ["psft.loss_mode=sft"],
    "DFT": ["psft.loss_mode=dft"],
    "SFT-KL": ["psft.loss_mode=sft_kl"],
    "ASFT": ["psft.loss_mode=asft"],
    "PSFT": ["psft.loss_mode=psft"],
    "PSFT-warm-up (1 SFT step)": ["psft.loss_mode=psft", "psft.sft_warmup_steps=1"],
    "PSFT, initial snapshot": ["psft.loss_mode=psft", "psft.snapshot=initial"],
}
COLUMNS = ("train/loss", "train/kl", "train/entropy", "train/clip_frac")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    from psft_assets.tiny_model import build_tiny_model
    from psft_assets.toy_rows import make_rows, write_parquet

    work = Path(tempfile.mkdtemp(prefix="psft_modes_"))
    model = build_tiny_model(work / "model")
    train = write_parquet(make_rows(args.rows, seed=1), work / "train.parquet")
    last: dict[str, dict] = {}
    for name, extra in MODES.items():
        out = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        out.mkdir()
        log = out / "metrics.jsonl"
        command = [
            sys.executable,
            "-m",
            "recipe.psft.main_psft",
            f"model.path={model}",
            f"data.train_files={train}",
            "data.val_files=null",
            "data.max_length=512",
            f"data.train_batch_size={args.batch}",
            f"psft.mini_batch_size={args.batch // args.k}",
            "data.micro_batch_size_per_gpu=2",
            f"trainer.n_gpus_per_node={args.workers}",
            f"trainer.total_training_steps={args.steps}",
            "trainer.logger=[console,file]",
            f"trainer.default_local_dir={out / 'ckpt'}",
            f"optim.lr={args.lr}",
            "optim.lr_warmup_steps=0",
            "model.enable_gradient_checkpointing=false",
            "psft.log_kl=true",
            *extra,
            *args.overrides,
        ]
        env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(log)}
        proc = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        last[name] = {k: v for e in entries if e["step"] == args.steps for k, v in e["data"].items()}
        print(f"{name}: done", flush=True)

    print(f"\nlast step ({args.steps}) of each run; {args.rows} rows, batch {args.batch}, k={args.k}, lr {args.lr}")
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, metrics in last.items():
        print(f"| {name} | " + " | ".join(f"{metrics.get(c, float('nan')):.4f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
