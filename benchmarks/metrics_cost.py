"""What the token metrics (entropy, token accuracy) cost: peak memory per rank and step time, on/off.

One Ray cluster, one FSDP worker group, one fixed batch; PSFT steps with ``psft.token_metrics`` on and
off, interleaved (the order rotates every round) so machine noise hits both alike. The model is a
random Qwen2 with Qwen2.5's 151,646-token vocabulary, fed 2,048-token rows, in one of two shapes:

* ``--shape qwen2.5-0.5b`` (default): Qwen2.5-0.5B's widths (hidden 896, 14 heads, 2 KV heads, MLP
  4,864), ``--layers`` of them (2 by default, to fit a CPU): the smallest real model with this
  vocabulary, so the lm_head and its backward are as wide as in practice.
* ``--shape tiny``: 64 wide, a shape no real 151k-vocabulary model has. Its step is almost nothing but
  vocabulary-sized passes, so it is the worst case for metrics computed from the logits.

Step time: each round runs one step of each variant back to back; the time ratio is the median over
rounds of on / off within a round (adjacent steps share the machine's state, which on a shared VM
drifts by more than the effect being measured). The probe's own wall time is also measured inside
the workers, a direct reading of the cost that noise does not blur.

Peak memory per rank: the high-water mark of the worker process's resident memory (VmHWM, reset
before each measured step through /proc/PID/clear_refs) on CPU, torch's max_memory_allocated on GPU.

    python benchmarks/metrics_cost.py --workers 1 --rows 2 --k 2 --rounds 5
    python benchmarks/metrics_cost.py --shape tiny --workers 1 --rows 2 --k 2 --rounds 7
    python benchmarks/metrics_cost.py --rounds 5 psft.update_token_metrics=true

The last line reads ``memory ratio <on/off> time ratio <on/off>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from harness import QWEN25_05B_WIDTHS, build_trainer, first_batch, worker_peaks_gib

QWEN25_VOCAB = 151_646
SHAPES = {
    "qwen2.5-0.5b": QWEN25_05B_WIDTHS,
    "tiny": {"hidden_size": 64, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 256},
}


def rows_of_tokens(n: int, tokens: int, tokenizer) -> list[dict]:
    """``n`` rows of more than ``tokens`` tokens (cut to exactly ``tokens`` by data.truncation=right)."""
    unit = "Then 17 + 4 = 21, and 21 + 4 = 25. "
    demo = unit * (2 * tokens // max(1, len(tokenizer(unit)["input_ids"])) + 1)
    return [{"prompt": [{"role": "user", "content": f"Count on from {i}."}], "demonstration": demo} for i in range(n)]


def with_vocabulary(model_dir: Path, vocab: int) -> None:
    """Grow a model's vocabulary to ``vocab`` rows (the logits' width; the extra ids are never inputs)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    model.save_pretrained(model_dir, safe_serialization=True)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4, help="sequences per step (batch)")
    parser.add_argument("--k", type=int, default=2, help="updates per step (batch / mini-batch)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per row")
    parser.add_argument("--vocab", type=int, default=QWEN25_VOCAB)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b", help="layer widths (see above)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="FSDP ranks (GPUs, or CPU processes)")
    parser.add_argument("--rounds", type=int, default=3, help="measured steps per variant")
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--model", default=None, help="a HF model folder instead of the random tiny model")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of the trainer config")
    args = parser.parse_args()

    from omegaconf import open_dict
    from transformers import AutoConfig, AutoTokenizer

    from psft_assets.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="psft_metrics_cost_"))
    model = args.model
    if model is None:
        model = str(
            build_tiny_model(
                work / "model",
                **SHAPES[args.shape],
                num_layers=args.layers,
                max_position_embeddings=max(2048, args.tokens),
            )
        )
        with_vocabulary(Path(model), args.vocab)
    tokenizer = AutoTokenizer.from_pretrained(model)
    train = work / "train.parquet"
    pd.DataFrame(rows_of_tokens(args.rows, args.tokens, tokenizer)).to_parquet(train)

    config, trainer = build_trainer(
        model,
        train,
        work,
        batch=args.rows,
        mini_batch=args.rows // args.k,
        workers=args.workers,
        settings=[
            "psft.loss_mode=psft",
            f"data.max_length={args.tokens}",
            "data.truncation=right",
            "data.micro_batch_size_per_gpu=1",
            "data.use_dynamic_bsz=false",
            "engine.infer_micro_batch_size_per_gpu=1",
            "model.enable_gradient_checkpointing=true",
        ],
        overrides=args.overrides,
    )
    batch = first_batch(trainer)
    seqlens = trainer._get_batch_seqlens(batch).tolist()
    vocab = AutoConfig.from_pretrained(model).vocab_size
    shape = "" if args.model else f"{args.shape} shape, {args.layers} layers, "
    print(
        f"model: {shape}vocabulary {vocab}; batch {args.rows} rows of {statistics.mean(seqlens):.0f} tokens, "
        f"k={args.k}, micro-batch 1, {args.workers} ranks"
    )

    time_probe_in_workers(trainer)
    variants = {"on": True, "off": False}
    times: dict[str, list[float]] = {name: [] for name in variants}
    probe: dict[str, list[float]] = {name: [] for name in variants}
    forward: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[list[float]]] = {name: [] for name in variants}
    step = 10_000
    names = list(variants)
    for round_index in range(args.warmup_rounds + args.rounds):
        order = names[round_index % 2 :] + names[: round_index % 2]
        for name in order:
            with open_dict(config):
                config.psft.token_metrics = variants[name]
            worker_peaks_gib(trainer, reset=True)
            probe_seconds(trainer)
            start = time.perf_counter()
            metrics = trainer.train_step(batch, step)
            elapsed = time.perf_counter() - start
            step += 1
            if round_index >= args.warmup_rounds:
                times[name].append(elapsed)
                probe[name].append(probe_seconds(trainer))
                forward[name].append(metrics["perf/snapshot_time_s"])
                peaks[name].append(worker_peaks_gib(trainer))
                peak_text = ", ".join(f"{p:.2f}" for p in peaks[name][-1])
                print(
                    f"token metrics {name}: {elapsed:.2f} s (forward-only pass {forward[name][-1]:.2f} s, probe "
                    f"{probe[name][-1]:.2f} s), peak GiB per rank {peak_text}",
                    flush=True,
                )
                if name == "on":
                    assert "train/entropy" in metrics, "token metrics on, but no train/entropy"
        print(f"round {round_index + 1}/{args.warmup_rounds + args.rounds} done", flush=True)

    print(
        f"\n{'token metrics':<15}{'median s':>10}{'min s':>9}{'max s':>9}{'pass s':>9}{'probe s':>9}"
        "   peak memory per rank (GiB)"
    )
    peak_of = {name: [max(p[r] for p in peaks[name]) for r in range(args.workers)] for name in names}
    for name in names:
        ranks = ", ".join(f"{p:.2f}" for p in peak_of[name])
        median, low, high = statistics.median(times[name]), min(times[name]), max(times[name])
        pass_s, probe_s = statistics.median(forward[name]), statistics.median(probe[name])
        print(f"{name:<15}{median:>10.2f}{low:>9.2f}{high:>9.2f}{pass_s:>9.2f}{probe_s:>9.2f}   {ranks}")
    memory_ratio = max(peak_of["on"]) / max(peak_of["off"])
    paired = [on / off for on, off in zip(times["on"], times["off"], strict=True)]
    probe_share = statistics.median(p / off for p, off in zip(probe["on"], times["off"], strict=True))
    print(f"time ratio per round: {', '.join(f'{r:.3f}' for r in paired)}")
    print(f"probe time / step time off: {probe_share:.3f} (the probe's own cost, read inside the workers)")
    print(f"memory ratio {memory_ratio:.3f} time ratio {statistics.median(paired):.3f}")


if __name__ == "__main__":
    main()
