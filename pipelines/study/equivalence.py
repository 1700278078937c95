"""The light loop against the real trainer, on one configuration: same model, rows, batch order,
optimizer and loss; the per-step losses must agree.

The real trainer is ``python -m recipe.psft.main_psft`` (Ray, one FSDP engine worker on CPU). The
light loop is :func:`pipelines.study.finetune.train_step` with the trainer's data order (verl's
``DistributedSampler`` with ``trainer.seed``) and a constant learning rate. Both log, per step, the
mean over the step's updates of the demonstration NLL, the PSFT objective and the clip fraction.

    python -m pipelines.study.equivalence [--model DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DistributedSampler

from psft_assets.trainer_process import run_trainer_process
from recipe.psft.losses import TokenLoss

from .finetune import METHODS, FinetuneConfig, train_step
from .model import Batch, CharTokenizer
from .pretrain import load_pretrained
from .world import FINETUNE_FAMILY, FINETUNE_STYLE, sample_examples

COMPARED = ("nll", "objective", "clip_frac")


def trainer_overrides(model: Path, train: Path, out: Path, rows: int, cfg: FinetuneConfig, k: int, steps: int,
                      lr: float, seed: int) -> list[str]:
    return [
        f"model.path={model}",
        f"data.train_files={train}",
        "data.val_files=null",
        "data.max_length=128",
        f"data.train_batch_size={k * cfg.mini_batch}",
        f"data.micro_batch_size_per_gpu={cfg.mini_batch}",
        f"psft.mini_batch_size={cfg.mini_batch}",
        "psft.loss_mode=psft",
        f"psft.clip_ratio_low={cfg.clip_ratio_low}",
        f"psft.clip_ratio_high={cfg.clip_ratio_high}",
        "trainer.n_gpus_per_node=1",
        f"trainer.total_training_steps={steps}",
        f"trainer.seed={seed}",
        "trainer.logger=[console,file]",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={out / 'ckpt'}",
        f"optim.lr={lr}",
        "optim.lr_warmup_steps=0",
        "optim.weight_decay=0.0",
        f"optim.clip_grad={cfg.grad_clip}",
        "model.enable_gradient_checkpointing=false",
    ]


def run_trainer(overrides: list[str], out: Path, timeout: int = 600) -> list[dict]:
    """Run the real trainer in a subprocess; return its per-step file-log entries."""
    log_path = out / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    run = run_trainer_process(overrides, out, log_path, timeout)
    if run.returncode != 0:
        raise RuntimeError(f"trainer failed ({run.returncode}):\n{run.output[-4000:]}")
    return run.log


def loop_steps(model_dir: Path, examples, rows: int, cfg: FinetuneConfig, k: int, steps: int, lr: float,
               seed: int) -> list[dict[str, float]]:
    """The light loop over the trainer's batches; per-step means of the compared metrics."""
    tokenizer = CharTokenizer()
    encoded = [tokenizer.encode(e) for e in examples]
    model = load_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = TokenLoss("psft", cfg.clip_ratio_low, cfg.clip_ratio_high)
    sampler = DistributedSampler(range(rows), shuffle=True, num_replicas=1, rank=0, drop_last=True, seed=seed)
    step_rows = k * cfg.mini_batch
    result: list[dict[str, float]] = []
    epoch = 0
    while len(result) < steps:
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, rows - step_rows + 1, step_rows):
            batch = Batch.of([encoded[i] for i in order[start:start + step_rows]], tokenizer.pad_id)
            updates = list(train_step(model, optimizer, loss_fn, batch, METHODS["psft_k4"], cfg))
            result.append({key: sum(u[key] for u in updates) / len(updates) for key in COMPARED})
            if len(result) == steps:
                break
        epoch += 1
    return result


def compare(model_dir: Path, out: Path, k: int = 4, steps: int = 3, lr: float = 1e-3, seed: int = 0) -> dict:
    """Run both on the same configuration; return both series and the largest absolute difference."""
    cfg = FinetuneConfig()
    rows = k * cfg.mini_batch * steps
    examples = sample_examples(FINETUNE_FAMILY, rows, seed=100, held_out=False, style=FINETUNE_STYLE)
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train.parquet"
    pd.DataFrame([e.row() for e in examples]).to_parquet(train)
    log = run_trainer(trainer_overrides(model_dir, train, out, rows, cfg, k, steps, lr, seed), out / "trainer")
    trainer = [
        {key: entry["data"][f"train/{key}"] for key in COMPARED}
        for entry in sorted(log, key=lambda e: e["step"]) if "train/nll" in entry["data"]
    ]
    loop = loop_steps(model_dir, examples, rows, cfg, k, steps, lr, seed)
    diff = max(abs(t[key] - s[key]) for t, s in zip(trainer, loop, strict=True) for key in COMPARED)
    result = {"k": k, "mini_batch": cfg.mini_batch, "lr": lr, "steps": steps, "trainer": trainer, "loop": loop,
              "max_abs_diff": diff}
    (out / "equivalence.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a pretrained study model folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/study-equivalence"))
    args = parser.parse_args(argv)
    result = compare(args.model, args.out)
    for i, (t, s) in enumerate(zip(result["trainer"], result["loop"], strict=True), start=1):
        print(f"step {i}: " + "  ".join(f"{k} trainer {t[k]:.6f} loop {s[k]:.6f}" for k in COMPARED))
    print(f"max abs difference {result['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
