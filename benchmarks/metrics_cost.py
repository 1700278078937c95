"""What the token metrics (entropy, token accuracy) cost: peak memory per rank and step time, on/off.

One Ray cluster, one FSDP worker group, one fixed batch; steps of one loss mode (``--mode``, default
psft) with ``psft.token_metrics`` on and off, interleaved (the order alternates every round) so machine
noise hits both alike. The model is a random Qwen2 in one of three shapes, each with its own batch:

* ``--shape qwen2.5-0.5b`` (default): Qwen2.5-0.5B's widths (hidden 896, 14 heads, 2 KV heads, MLP
  4,864) and Qwen2.5's 151,646-token vocabulary, ``--layers`` of them (2 by default, to fit a CPU):
  the smallest real model with this vocabulary, so the lm_head and its backward are as wide as in
  practice. 2 rows of 2,048 tokens, k = 2, micro-batches of 1 row, gradient checkpointing, 1 rank.
* ``--shape smollm2``: the quickstart's model, SmolLM2-135M's widths (hidden 576, 9 heads, 3 KV
  heads, MLP 1,536) and 49,152-token vocabulary, 2 layers of its 30; the quickstart's batch (16 rows,
  mini-batch 2: k = 8; dynamic micro-batches of 4,096 tokens, no gradient checkpointing, 1 rank) of
  256-token rows (its gsm_symbolic rows average about 200 Qwen tokens).
* ``--shape tiny``: 64 wide with the 151,646-token vocabulary, a shape no real model has. Its step is
  almost nothing but vocabulary-sized passes, so it is the worst case for metrics computed from the
  logits. Batch as for qwen2.5-0.5b.

Step time: the time ratio is the median over rounds of on / off within a round (adjacent steps share
the machine's state, which on a shared VM drifts by more than the effect being measured); every
round's ratio is printed. The probe's own wall time is also measured inside the workers, a direct
reading of the cost that noise does not blur.

The clipped-token log (``psft.clipped_token_log``, PSFT only) rides on the same budget: with ``--mode
psft --log-variant`` a third variant runs the token metrics without it, so one run gives the ratio to
metrics off with and without the log (the log's lines go to a file in the work folder, so decoding and
writing are timed too). It is opt-in because a third variant adds half the run's time: the defaults
(PSFT, qwen2.5-0.5b, 4 rounds) take about 9 minutes on 2 cores, with it about 14.

Peak memory per rank: the high-water mark of the worker process's resident memory (VmHWM, reset
before each measured step through /proc/PID/clear_refs) on CPU, torch's max_memory_allocated on GPU.

    python -m benchmarks.metrics_cost                            # 4 rounds + 1 warm-up step, ~9 min on 2 cores
    python -m benchmarks.metrics_cost --shape smollm2 --log-variant   # also the clipped-token log's own cost
    python -m benchmarks.metrics_cost --mode sft --rounds 8
    python -m benchmarks.metrics_cost --shape smollm2 --mode sft
    python -m benchmarks.metrics_cost --shape tiny --rounds 7
    python -m benchmarks.metrics_cost --rounds 5 psft.update_token_metrics=true

The last line reads ``memory ratio <on/off> time ratio <on/off>`` ("on": every default metric, the
clipped-token log included); with ``--log-variant`` the line before it gives the same without the log.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.harness import (
    QWEN25_05B_WIDTHS,
    Step,
    batch_seqlens,
    build_trainer,
    first_batch,
    paired_ratios,
    run_interleaved,
)

QWEN25_VOCAB = 151_646
# Per-row micro-batches and gradient checkpointing: what 2,048-token rows of a 151k vocabulary need on a CPU.
LONG_ROW_SETTINGS = [
    "data.micro_batch_size_per_gpu=1",
    "data.use_dynamic_bsz=false",
    "engine.infer_micro_batch_size_per_gpu=1",
    "model.enable_gradient_checkpointing=true",
]
# The quickstart's engine settings (pipelines/quickstart.py).
QUICKSTART_SETTINGS = [
    "data.use_dynamic_bsz=true",
    "data.max_token_len_per_gpu=4096",
    "model.enable_gradient_checkpointing=false",
]
SHAPES = {
    "qwen2.5-0.5b": {
        "widths": QWEN25_05B_WIDTHS,
        "vocab": QWEN25_VOCAB,
        "rows": 2,
        "k": 2,
        "tokens": 2048,
        "settings": LONG_ROW_SETTINGS,
    },
    "smollm2": {
        "widths": {"hidden_size": 576, "num_heads": 9, "num_kv_heads": 3, "intermediate_size": 1536},
        "vocab": 49_152,
        "rows": 16,
        "k": 8,
        "tokens": 256,
        "settings": QUICKSTART_SETTINGS,
    },
    "tiny": {
        "widths": {"hidden_size": 64, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 256},
        "vocab": QWEN25_VOCAB,
        "rows": 2,
        "k": 2,
        "tokens": 2048,
        "settings": LONG_ROW_SETTINGS,
    },
}


def rows_of_tokens(n: int, tokens: int, tokenizer) -> list[dict]:
    """``n`` rows of more than ``tokens`` tokens (cut to exactly ``tokens`` by data.truncation=right)."""
    unit = "Then 17 + 4 = 21, and 21 + 4 = 25. "
    demo = unit * (2 * tokens // max(1, len(tokenizer(unit)["input_ids"])) + 1)
    return [{"prompt": [{"role": "user", "content": f"Count on from {i}."}], "demonstration": demo} for i in range(n)]


def random_model(out: Path, widths: dict, layers: int, vocab: int, max_positions: int) -> Path:
    """A random Qwen2 of these widths whose logits are ``vocab`` wide, with the small offline tokenizer (the
    ids above the tokenizer's are never inputs). Built at its full vocabulary: no resize and second save."""
    from psft_assets.tiny_model import build_tokenizer, random_qwen2

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    model = random_qwen2(
        vocab_size=max(vocab, len(tokenizer)),
        hidden_size=widths["hidden_size"],
        intermediate_size=widths["intermediate_size"],
        num_layers=layers,
        num_heads=widths["num_heads"],
        num_kv_heads=widths["num_kv_heads"],
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def time_probe_in_workers(trainer) -> None:
    """Make every worker add up the wall time of its logits probe (read by :func:`probe_seconds`)."""
    import ray

    def install(_actor) -> None:
        import time as clock

        from recipe.psft.verl_adapters import engine

        if getattr(engine, "probe_seconds", None) is not None:
            return
        engine.probe_seconds = 0.0
        probe = engine.token_probe

        def timed(logits, data):
            start = clock.perf_counter()
            result = probe(logits, data)
            engine.probe_seconds += clock.perf_counter() - start
            return result

        engine.token_probe = timed

    ray.get([w.__ray_call__.remote(install) for w in trainer.training_client.workers])


def probe_seconds(trainer) -> float:
    """The slowest worker's probe time since the last call (and restart the count)."""
    import ray

    def read(_actor) -> float:
        from recipe.psft.verl_adapters import engine

        seconds, engine.probe_seconds = engine.probe_seconds, 0.0
        return seconds

    return max(ray.get([w.__ray_call__.remote(read) for w in trainer.training_client.workers]))


def main() -> None:
    from recipe.psft.losses import LOSS_MODES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b", help="model and batch (see above)")
    parser.add_argument("--mode", choices=sorted(LOSS_MODES), default="psft", help="psft.loss_mode of every step")
    parser.add_argument("--rows", type=int, default=None, help="sequences per step (batch); default: the shape's")
    parser.add_argument("--k", type=int, default=None, help="updates per step; default: the shape's")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per row; default: the shape's")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary (logits' width); default: the shape's")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="FSDP ranks (GPUs, or CPU processes)")
    parser.add_argument("--rounds", type=int, default=4, help="measured steps per variant")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="untimed steps first (one variant each)")
    parser.add_argument("--log-variant", action="store_true",
                        help="with --mode psft: a third variant, token metrics on without the clipped-token log")
    parser.add_argument("--model", default=None, help="a HF model folder instead of the random model")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the trainer config")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    rows, k = args.rows or shape["rows"], args.k or shape["k"]
    tokens, vocab = args.tokens or shape["tokens"], args.vocab or shape["vocab"]

    from transformers import AutoConfig, AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="psft_metrics_cost_"))
    model = args.model or str(random_model(work / "model", shape["widths"], args.layers, vocab, max(2048, tokens)))
    tokenizer = AutoTokenizer.from_pretrained(model)
    train = work / "train.parquet"
    pd.DataFrame(rows_of_tokens(rows, tokens, tokenizer)).to_parquet(train)

    config, trainer = build_trainer(
        model,
        train,
        work,
        batch=rows,
        mini_batch=rows // k,
        workers=args.workers,
        settings=[f"psft.loss_mode={args.mode}", f"data.max_length={tokens}", "data.truncation=right"]
        + shape["settings"],
        overrides=args.overrides,
    )
    batch = first_batch(trainer)
    seqlens = batch_seqlens(batch)
    described = "" if args.model else f"{args.shape} shape, {args.layers} layers, "
    print(
        f"model: {described}vocabulary {AutoConfig.from_pretrained(model).vocab_size}; {args.mode}, batch {rows} rows "
        f"of {statistics.mean(seqlens):.0f} tokens, k={k}, {args.workers} ranks"
    )

    variants = {
        "on": {"token_metrics": True, "clipped_token_log": True},
        "off": {"token_metrics": False, "clipped_token_log": False},
    }
    if args.mode == "psft":  # the log is a no-op in modes without a ratio
        trainer.clipped_log = clipped_token_log(config, work, tokenizer)
    if args.mode == "psft" and args.log_variant:
        variants["on, no log"] = {"token_metrics": True, "clipped_token_log": False}
    time_probe_in_workers(trainer)
    probe: dict[str, list[float]] = {name: [] for name in variants}

    def after_step(name: str, step: Step, measured: bool) -> None:
        seconds = probe_seconds(trainer)
        if not measured:
            return
        probe[name].append(seconds)
        if name.startswith("on"):
            assert "train/entropy" in step.metrics, "token metrics on, but no train/entropy"
        peaks = ", ".join(f"{p:.2f}" for p in step.peaks_gib)
        forward = step.metrics["perf/snapshot_time_s"]
        print(
            f"token metrics {name}: {step.seconds:.2f} s (forward-only pass {forward:.2f} s, "
            f"probe {seconds:.2f} s), peak GiB per rank {peaks}",
            flush=True,
        )

    measured = run_interleaved(
        trainer,
        config,
        variants,
        rounds=args.rounds,
        warmup=args.warmup_rounds,
        batch=batch,
        before_step=lambda _name: probe_seconds(trainer),
        after_step=after_step,
        warmup_each=False,
    )

    print(
        f"\n{'token metrics':<15}{'median s':>10}{'min s':>9}{'max s':>9}{'pass s':>9}{'probe s':>9}"
        "   peak memory per rank (GiB)"
    )
    peak_of = {name: [max(rank) for rank in zip(*(s.peaks_gib for s in steps))] for name, steps in measured.items()}
    for name, steps in measured.items():
        seconds = [s.seconds for s in steps]
        pass_s = statistics.median(s.metrics["perf/snapshot_time_s"] for s in steps)
        ranks = ", ".join(f"{p:.2f}" for p in peak_of[name])
        print(
            f"{name:<15}{statistics.median(seconds):>10.2f}{min(seconds):>9.2f}{max(seconds):>9.2f}{pass_s:>9.2f}"
            f"{statistics.median(probe[name]):>9.2f}   {ranks}"
        )
    memory_ratio = max(peak_of["on"]) / max(peak_of["off"])
    paired = paired_ratios(measured, "on", "off")
    probe_share = statistics.median(p / s.seconds for p, s in zip(probe["on"], measured["off"], strict=True))
    print(f"time ratio per round: {', '.join(f'{r:.3f}' for r in paired)}")
    print(f"probe time / step time off: {probe_share:.3f} (the probe's own cost, read inside the workers)")
    if "on, no log" in measured:
        lines = len(trainer.clipped_log.path.read_text().splitlines())
        print(f"clipped-token log: {lines} lines in {trainer.clipped_log.path} (one per 'on' step, warm-up included)")
        without = paired_ratios(measured, "on, no log", "off")
        log_only = paired_ratios(measured, "on", "on, no log")
        print(f"without the clipped-token log, time ratio per round: {', '.join(f'{r:.3f}' for r in without)}")
        print(f"clipped-token log alone (on / on, no log) per round: {', '.join(f'{r:.3f}' for r in log_only)}")
        print(
            f"without the clipped-token log: memory ratio {max(peak_of['on, no log']) / max(peak_of['off']):.3f} "
            f"time ratio {statistics.median(without):.3f}"
        )
    print(f"memory ratio {memory_ratio:.3f} time ratio {statistics.median(paired):.3f}")


def clipped_token_log(config, work: Path, tokenizer):
    """The clipped-token log of the 'on' steps, in the work folder (``train_step`` writes it as in a run)."""
    from recipe.psft.clipped_token_log import ClippedTokenLog
    from recipe.psft.token_metrics import ratio_bin_edges

    edges = ratio_bin_edges(float(config.psft.clip_ratio_low), float(config.psft.clip_ratio_high))
    return ClippedTokenLog(work / "metrics_cost.clipped_tokens.jsonl", edges, tokenizer)


if __name__ == "__main__":
    main()
