"""PSFT's step cost against SFT with the same number of updates, measured side by side.

One Ray cluster, one FSDP worker group, one fixed batch. Steps of the variants are interleaved
(rotating their order every round) so machine noise hits all of them alike:

    SFT, k updates    vs   PSFT, k updates   (the snapshot pass is PSFT's only extra work)
    SFT, 1 update     vs   PSFT, k = 1       (no snapshot pass at all: should cost the same)

Lower bound for PSFT(k) / SFT(k), with forward ~ 1/3 of forward + backward and the first mini-batch
reusing its own log-probs: 1 + (k - 1) / (3k).

    python -m benchmarks.step_cost                 # CPU defaults: ~4M-param model, batch 16, 2 ranks
    python -m benchmarks.step_cost --k 8 --rounds 8
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.harness import batch_seqlens, build_trainer, first_batch, paired_ratios, run_interleaved


def demonstration_rows(n: int, demo_tokens: int, tokenizer, seed: int) -> list[dict]:
    """Arithmetic walk-throughs of about ``demo_tokens`` tokens each."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.randint(10, 99)
        parts, total = [], a
        while len(tokenizer(" ".join(parts))["input_ids"]) < demo_tokens - 12:
            b = rng.randint(2, 9)
            parts.append(f"Then {total} + {b} = {total + b}.")
            total += b
        demo = " ".join(parts) + f" The answer is \\boxed{{{total}}}."
        rows.append({"prompt": [{"role": "user", "content": f"Start at {a} and keep adding."}], "demonstration": demo})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4, help="updates per step (batch / mini-batch)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--demo-tokens", type=int, default=220)
    parser.add_argument("--rounds", type=int, default=6, help="measured steps per variant")
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="FSDP ranks (GPUs, or CPU processes)")
    parser.add_argument("--model", default=None, help="a HF model folder instead of the random tiny model")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the trainer config")
    args = parser.parse_args()

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from psft_assets.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="psft_step_cost_"))
    model = args.model or str(
        build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers, num_heads=4)
    )
    train = work / "train.parquet"
    tokenizer = AutoTokenizer.from_pretrained(model)
    pd.DataFrame(demonstration_rows(args.batch, args.demo_tokens, tokenizer, seed=0)).to_parquet(train)

    config, trainer = build_trainer(
        model,
        train,
        work,
        batch=args.batch,
        mini_batch=args.batch // args.k,
        workers=args.workers,
        settings=["data.max_length=2048", "model.enable_gradient_checkpointing=false"],
        overrides=args.overrides,
    )
    batch = first_batch(trainer)
    seqlens = batch_seqlens(batch)
    demo_lengths = batch["loss_mask"].values().reshape(-1).split(seqlens)
    weights = sorted(Path(model).glob("*.safetensors"))
    params = sum(t.numel() for f in weights for t in load_file(str(f)).values())
    print(
        f"model: {params / 1e6:.1f}M parameters; batch {args.batch} sequences of {statistics.mean(seqlens):.0f} tokens "
        f"({statistics.mean(int(m.sum()) for m in demo_lengths):.0f} demonstration tokens) on {args.workers} ranks"
    )

    k = args.k
    variants = {
        f"SFT, {k} updates": {"loss_mode": "sft", "mini_batch_size": args.batch // k},
        f"PSFT, k={k}": {"loss_mode": "psft", "mini_batch_size": args.batch // k},
        "SFT, 1 update": {"loss_mode": "sft", "mini_batch_size": args.batch},
        "PSFT, k=1": {"loss_mode": "psft", "mini_batch_size": args.batch},
    }
    measured = run_interleaved(trainer, config, variants, rounds=args.rounds, warmup=args.warmup_rounds, batch=batch)

    print(f"\nmedian seconds per step over {args.rounds} interleaved rounds")
    print(f"{'variant':<22}{'median s':>10}{'min s':>9}{'max s':>9}")
    median = {}
    for name, steps in measured.items():
        seconds = [s.seconds for s in steps]
        median[name] = statistics.median(seconds)
        print(f"{name:<22}{median[name]:>10.3f}{min(seconds):>9.3f}{max(seconds):>9.3f}")
    ratio_k = median[f"PSFT, k={k}"] / median[f"SFT, {k} updates"]
    ratio_1 = median["PSFT, k=1"] / median["SFT, 1 update"]
    bound = 1 + (k - 1) / (3 * k)
    print(f"\nPSFT(k={k}) / SFT({k} updates) = {ratio_k:.3f}   (bound with the first-mini-batch skip: {bound:.3f})")
    print(f"PSFT(k=1) / SFT(1 update)      = {ratio_1:.3f}   (bound: 1.000)")
    for label, (psft, sft) in {
        f"k={k}": (f"PSFT, k={k}", f"SFT, {k} updates"),
        "k=1": ("PSFT, k=1", "SFT, 1 update"),
    }.items():
        print(f"per round, {label}: " + ", ".join(f"{r:.3f}" for r in paired_ratios(measured, psft, sft)))
    peaks = [max(rank) for rank in zip(*(s.peaks_gib for steps in measured.values() for s in steps))]
    print("peak memory per rank (GiB): " + ", ".join(f"rank {i}: {p:.2f}" for i, p in enumerate(peaks)))


if __name__ == "__main__":
    main()
