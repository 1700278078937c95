"""The measuring half of ``benchmarks/gpu_check.sh`` (runs on CPU too, at toy sizes, for testing).

python -m benchmarks.gpu_bench prepare WORK [--size 0.5b|tiny] [--rows 64] [--demo-tokens 1000]
    random Qwen2 (Qwen2.5-0.5B's shape, 151936-entry vocabulary) + offline tokenizer + train.parquet;
    then checks that sdpa keeps sequences packed into one row apart (verl packs with
    use_remove_padding, and flash-attention is not installed on the GPU image)
python -m benchmarks.gpu_bench steps --model M --train F [--batch 32 --k 4 --rounds 4] [overrides...]
    one trainer, the variants' steps interleaved (benchmarks.harness.run_interleaved); per variant the
    median step time, tokens/s and the workers' peak accelerator memory; writes steps.json
python -m benchmarks.gpu_bench same-run LOG_A LOG_B [--rtol 0.02]
    k=1 PSFT against SFT from two `file` logger logs: same steps, same losses and grad norms
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import QWEN25_05B_WIDTHS, Step, batch_seqlens, build_trainer, first_batch, run_interleaved

# Qwen2.5-0.5B's shape (494M parameters with its 151936-entry vocabulary, tied embeddings). The
# tokenizer has 512 entries; the embedding rows above it are never used by the data, but the logits
# (and so the memory and time of token metrics) have the real model's width.
SIZES = {
    "0.5b": dict(QWEN25_05B_WIDTHS, num_layers=24, vocab=151936),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256, vocab=2048),
}


def fail(message: str) -> None:
    print(f"[gpu_bench] error: {message}", file=sys.stderr)
    sys.exit(1)


# --- prepare -------------------------------------------------------------------------------------


def build_model(out: Path, size: str, seed: int = 0) -> int:
    """Random Qwen2 of ``size`` with the offline ChatML tokenizer, saved in bf16; returns its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from psft_assets.tiny_model import build_tokenizer

    shape = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    config = Qwen2Config(
        vocab_size=max(shape["vocab"], len(tokenizer)),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"],
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 0.5B on the GPU takes seconds
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def check_packed_attention(model_dir: Path, attn_implementation: str = "sdpa") -> float:
    """Max |difference| of a sequence's log-probs alone and packed behind another one (position ids restart).

    verl's use_remove_padding packs a micro-batch into one row and relies on the attention kernel to
    keep the sequences apart. A large difference means tokens attend across sequence boundaries.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation=attn_implementation
    ).to(device)
    model.eval()
    generator = torch.Generator().manual_seed(1)
    first = torch.randint(3, 500, (1, 300), generator=generator).to(device)
    second = torch.randint(3, 500, (1, 200), generator=generator).to(device)
    with torch.no_grad():
        # use_cache=False as in verl's training forwards: with a cache, transformers does not look for
        # packed sequences in the position ids at all.
        alone = model(input_ids=second, position_ids=torch.arange(200, device=device)[None], use_cache=False)
        alone = alone.logits.float()
        packed_ids = torch.cat([first, second], dim=1)
        positions = torch.cat([torch.arange(300, device=device), torch.arange(200, device=device)])[None]
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[:, 300:].float()
    return float((alone.log_softmax(-1) - packed.log_softmax(-1)).abs().max())


def prepare(args: argparse.Namespace) -> None:
    import pandas as pd
    from transformers import AutoTokenizer

    from benchmarks.step_cost import demonstration_rows

    work = Path(args.work)
    model_dir = work / "model"
    start = time.perf_counter()
    params = build_model(model_dir, args.size)
    print(f"[gpu_bench] model: random Qwen2 '{args.size}', {params / 1e6:.0f}M parameters, bf16 -> {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = demonstration_rows(args.rows, args.demo_tokens, tokenizer, seed=0)
    train = work / "train.parquet"
    pd.DataFrame(rows).to_parquet(train)
    print(f"[gpu_bench] data: {len(rows)} demonstrations of ~{args.demo_tokens} tokens -> {train}")
    drift = check_packed_attention(model_dir)
    print(f"[gpu_bench] packed sdpa: max |log-prob difference| alone vs packed = {drift:.2e}")
    if not math.isfinite(drift) or drift > args.packed_tolerance:
        fail(
            f"sdpa attends across packed sequences (difference {drift:.3g} > {args.packed_tolerance}): "
            "verl's use_remove_padding needs flash-attention here; rerun with model.use_remove_padding=false"
        )
    print(f"[gpu_bench] prepared in {time.perf_counter() - start:.0f} s")


# --- steps ---------------------------------------------------------------------------------------


def steps(args: argparse.Namespace) -> None:
    k, batch_size = args.k, args.batch
    if batch_size % k:
        fail(f"--batch {batch_size} is not a multiple of --k {k}")
    work = Path(tempfile.mkdtemp(prefix="psft_gpu_bench_"))
    config, trainer = build_trainer(
        args.model,
        args.train,
        work,
        batch=batch_size,
        mini_batch=batch_size // k,
        workers=args.workers,
        settings=["data.val_files=null"],
        overrides=args.overrides,
    )
    batch = first_batch(trainer)
    seqlens = batch_seqlens(batch)
    tokens = sum(seqlens)
    print(
        f"[gpu_bench] batch: {batch_size} sequences, {tokens} tokens (mean {statistics.mean(seqlens):.0f}); "
        f"k={k}; {args.workers} rank(s); attention {config.model.override_config.get('attn_implementation')}; "
        f"strategy {config.engine.strategy}; device {config.trainer.device}",
        flush=True,
    )

    def settings(mode: str, mini_batch: int, token_metrics: bool = True) -> dict:
        return {"loss_mode": mode, "mini_batch_size": mini_batch, "token_metrics": token_metrics}

    variants = {
        "SFT, 1 update": settings("sft", batch_size),
        "PSFT, k=1": settings("psft", batch_size),
        f"PSFT, k={k}": settings("psft", batch_size // k),
        f"SFT, {k} updates": settings("sft", batch_size // k),
        f"PSFT, k={k}, no token metrics": settings("psft", batch_size // k, token_metrics=False),
        "SFT, 1 update, no token metrics": settings("sft", batch_size, token_metrics=False),
    }

    def check_finite(name: str, step: Step, _measured: bool) -> None:
        if not math.isfinite(step.metrics.get("train/loss", float("nan"))):
            fail(f"{name}: train/loss is {step.metrics.get('train/loss')}")

    measured = run_interleaved(
        trainer, config, variants, rounds=args.rounds, warmup=args.warmup_rounds, batch=batch, after_step=check_finite
    )
    times = {name: [s.seconds for s in steps] for name, steps in measured.items()}
    peaks = {name: max(max(s.peaks_gib) for s in steps) for name, steps in measured.items()}
    names = list(variants)

    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "median_s": median,
                "min_s": min(times[name]),
                "max_s": max(times[name]),
                "tokens_per_s": tokens / median,
                "peak_gib": peaks[name],
            }
        )
    median = {row["variant"]: row["median_s"] for row in rows}
    psft_k, sft_1 = f"PSFT, k={k}", "SFT, 1 update"
    ratios = {
        f"PSFT(k={k}) / SFT({k} updates) time": median[psft_k] / median[f"SFT, {k} updates"],
        "PSFT(k=1) / SFT(1 update) time": median["PSFT, k=1"] / median[sft_1],
        f"token metrics on/off time, PSFT k={k}": median[psft_k] / median[f"{psft_k}, no token metrics"],
        f"token metrics on/off peak memory, PSFT k={k}": peaks[psft_k] / peaks[f"{psft_k}, no token metrics"],
        "token metrics on/off time, SFT 1 update": median[sft_1] / median[f"{sft_1}, no token metrics"],
        "token metrics on/off peak memory, SFT 1 update": peaks[sft_1] / peaks[f"{sft_1}, no token metrics"],
    }
    result = {
        "batch_sequences": batch_size,
        "batch_tokens": tokens,
        "k": k,
        "rounds": args.rounds,
        "workers": args.workers,
        "variants": rows,
        "ratios": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def print_table(result: dict) -> None:
    print(
        f"\nmedian over {result['rounds']} interleaved rounds; batch {result['batch_sequences']} sequences = "
        f"{result['batch_tokens']} tokens; {result['workers']} rank(s)"
    )
    print(f"{'variant':<34}{'median s':>10}{'min s':>9}{'max s':>9}{'tokens/s':>11}{'peak GiB':>10}")
    for row in result["variants"]:
        print(
            f"{row['variant']:<34}{row['median_s']:>10.3f}{row['min_s']:>9.3f}{row['max_s']:>9.3f}"
            f"{row['tokens_per_s']:>11.0f}{row['peak_gib']:>10.2f}"
        )
    k = result["k"]
    bound = 1 + (k - 1) / (3 * k)
    for name, value in result["ratios"].items():
        note = f"   (bound without gradient checkpointing: {bound:.3f})" if name.startswith(f"PSFT(k={k})") else ""
        print(f"{name:<48} {value:.3f}{note}")


# --- same-run ------------------------------------------------------------------------------------


def read_log(path: Path) -> dict[int, dict]:
    if not path.exists():
        fail(f"{path}: no metrics log (did the run start?)")
    steps_seen: dict[int, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(f"{path}, line {number}: not JSON ({exc})")
        steps_seen.setdefault(int(entry["step"]), {}).update(entry["data"])
    return steps_seen


def same_run(args: argparse.Namespace) -> None:
    a, b = read_log(Path(args.log_a)), read_log(Path(args.log_b))
    if sorted(a) != sorted(b) or not a:
        fail(f"steps differ: {sorted(a)} vs {sorted(b)}")
    worst = 0.0
    print(f"{'step':>5}{'key':>18}{'A':>14}{'B':>14}{'rel diff':>10}")
    for step in sorted(a):
        for key in ("train/loss", "train/grad_norm"):
            if key not in a[step] or key not in b[step]:
                fail(f"step {step}: {key} missing in one log")
            x, y = float(a[step][key]), float(b[step][key])
            rel = abs(x - y) / max(abs(x), abs(y), 1e-12)
            worst = max(worst, rel)
            print(f"{step:>5}{key:>18}{x:>14.6f}{y:>14.6f}{rel:>10.2e}")
    if not worst <= args.rtol:
        fail(f"k=1 PSFT and SFT differ by {worst:.3g} (relative) > {args.rtol}")
    print(f"[gpu_bench] k=1 PSFT == SFT: largest relative difference {worst:.2e} (tolerance {args.rtol})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("work")
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--demo-tokens", type=int, default=1000)
    p.add_argument("--packed-tolerance", type=float, default=0.1, help="bf16 noise is ~1e-2; leaks are O(1)")
    s = commands.add_parser("steps")
    s.add_argument("--model", required=True)
    s.add_argument("--train", required=True)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--k", type=int, default=4)
    s.add_argument("--rounds", type=int, default=4)
    s.add_argument("--warmup-rounds", type=int, default=1)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--out", default="steps.json")
    s.add_argument("overrides", nargs="*", help="extra Hydra overrides of the trainer config")
    c = commands.add_parser("same-run")
    c.add_argument("log_a")
    c.add_argument("log_b")
    c.add_argument("--rtol", type=float, default=0.02)
    args = parser.parse_args()
    {"prepare": prepare, "steps": steps, "same-run": same_run}[args.command](args)


if __name__ == "__main__":
    main()
