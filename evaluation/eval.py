"""Evaluate a model on a test file: n samples per problem, graded, with Avg@n, pass@k and maj@n.

    # against the Ray Serve app (python -m evaluation.serve_app / serve run evaluation.serve_app:build_app ...)
    python -m evaluation.eval --model NAME --test_file aime24.parquet --n 32 \\
        --temperature 0.7 --top_p 0.95 --max_tokens 10240 --base-url http://127.0.0.1:8000
    # vLLM in this process, no server
    python -m evaluation.eval --backend vllm --model /path/to/model --test_file aime24.parquet --n 32

The same command again resumes: finished samples in ``--output`` are kept and only the rest is
generated. Exit status (the project's one table, ``recipe/psft/exit_codes.py``): 0 all samples graded,
6 some samples failed (recorded as errors in samples.jsonl and counted in summary.json; rerun to retry
them), 130 interrupted, 2 bad input (also: the folder holds another run, another process is writing it,
or samples.jsonl is damaged).

Every request carries the whole sampling set (temperature, top_p, top_k, min_p, repetition_penalty,
presence/frequency penalties, max_tokens, stop); unset ones are neutral, never the model's
generation_config.json. The run's fingerprint (run.json) holds them, a content hash of the model's
weights and tokenizer, the grader's version and the test file's hash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from evaluation import grader
from evaluation.data import DataError, Problem, load_problems, repeat_count
from evaluation.grader import GradingInterrupted, grade
from evaluation.identity import grader_identity, model_fingerprint, model_label
from evaluation.jobs import Completion, Job, Sampling
from evaluation.metrics import FAILED_COUNTING, summarize
from evaluation.store import CorruptSamples, RunLocked, RunMismatch, RunStore, sample_key
from recipe.psft.exit_codes import BAD_INPUT, INCOMPLETE, INTERRUPTED
from recipe.psft.files import file_sha256

# The project's exit codes (recipe/psft/exit_codes.py), under the names this CLI's callers use.
EXIT_ERRORS = INCOMPLETE
EXIT_BAD_INPUT = BAD_INPUT
EXIT_INTERRUPTED = INTERRUPTED


def parse_value(text: str) -> Any:
    """``--engine-arg`` values: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="served model name (serve) or model path (vllm)")
    p.add_argument(
        "--model-path",
        default=None,
        help="serve backend: the model folder the server serves, for the weights fingerprint and default "
        "names (default: the path the server reports in /v1/models, when it is a local folder)",
    )
    p.add_argument("--test_file", "--test-file", dest="test_file", required=True, help=".parquet or .jsonl")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=0.95)
    p.add_argument("--max_tokens", "--max-tokens", dest="max_tokens", type=int, default=10240)
    p.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=-1, help="-1: off (neutral)")
    p.add_argument("--min_p", "--min-p", dest="min_p", type=float, default=0.0)
    p.add_argument("--repetition_penalty", "--repetition-penalty", dest="repetition_penalty", type=float, default=1.0)
    p.add_argument("--presence_penalty", "--presence-penalty", dest="presence_penalty", type=float, default=0.0)
    p.add_argument("--frequency_penalty", "--frequency-penalty", dest="frequency_penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable); none by default")
    p.add_argument(
        "--n", type=int, default=None, help="samples per problem (default: how often the file repeats a problem)"
    )
    p.add_argument("--seed", type=int, default=None, help="base seed; per-problem seeds derive from it")
    p.add_argument("--backend", choices=("serve", "vllm"), default="serve")
    p.add_argument("--base-url", "--base_url", dest="base_url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (serve backend)")
    p.add_argument("--request-timeout", type=float, default=3600.0, help="seconds per HTTP request")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a failing request")
    p.add_argument("--retry-delay", type=float, default=1.0, help="first backoff delay, doubled per retry")
    p.add_argument("--output", default=None, help="results folder (default: outputs/eval/MODEL/FILE-settings)")
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="vllm backend: an argument of vllm.LLM, e.g. dtype=bfloat16 tensor_parallel_size=2 (repeatable)",
    )
    p.add_argument("--grade-timeout", type=float, default=10.0, help="seconds per grading check")
    p.add_argument("--no-progress", action="store_true")
    return p


def default_output(args: argparse.Namespace, label: str) -> Path:
    """``outputs/eval/<label>/<file>_t.._p.._m..``; ``label`` is ``<experiment>/global_step_N`` for a verl
    checkpoint, so two checkpoints of one run never share a folder."""
    stem = Path(args.test_file).stem
    tag = f"t{args.temperature:g}_p{args.top_p:g}_m{args.max_tokens}" + (
        f"_s{args.seed}" if args.seed is not None else ""
    )
    return Path("outputs") / "eval" / label / f"{stem}_{tag}"


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise DataError(f"--engine-arg {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def _row(job: Job, idx: int, comp: Completion | None, error: str | None, grade_timeout: float) -> dict[str, Any]:
    prob = job.problem
    row: dict[str, Any] = {
        "problem_id": prob.problem_id,
        "sample_index": idx,
        "data_source": prob.data_source,
        "ground_truth": prob.ground_truth,
    }
    if comp is None:
        row.update(response=None, extracted_answer=None, boxed=None, correct=None)
        row.update(completion_tokens=None, finish_reason=None, error=error or "unknown error")
        return row
    g = grade(comp.text, prob.ground_truth, timeout_s=grade_timeout)
    row.update(
        response=comp.text,
        extracted_answer=g.extracted,
        boxed=g.boxed,
        correct=g.correct,
        completion_tokens=comp.completion_tokens,
        finish_reason=comp.finish_reason,
        error=None,
    )
    return row


def build_summary(store: RunStore, problems: list[Problem], n: int, meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json: overall and per-data_source metrics over the samples with index < n."""
    latest = store.latest()
    per_problem: list[dict[str, Any]] = []
    for prob in problems:
        rec: dict[str, Any] = {"source": prob.data_source, "correct": [], "answers": [], "finish": [], "boxed": []}
        rec["errors"] = 0
        rec["missing"] = 0
        rec["tokens"] = []
        for idx in range(n):
            row = latest.get(sample_key(prob.problem_id, idx))
            if row is None:
                rec["missing"] += 1
            elif row.get("error") is not None:
                rec["errors"] += 1
            else:
                rec["correct"].append(bool(row["correct"]))
                rec["answers"].append(row.get("extracted_answer"))
                rec["finish"].append(row.get("finish_reason"))
                rec["boxed"].append(bool(row.get("boxed")))
                if row.get("completion_tokens") is not None:
                    rec["tokens"].append(row["completion_tokens"])
        per_problem.append(rec)

    def section(recs: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize(recs, n)
        out["samples_missing"] = sum(r["missing"] for r in recs)
        tokens = [t for r in recs for t in r["tokens"]]
        out["completion_tokens_mean"] = sum(tokens) / len(tokens) if tokens else None
        out["completion_tokens_total"] = sum(tokens)
        return out

    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in per_problem:
        by_source[rec["source"]].append(rec)
    overall = section(per_problem)
    complete = overall["samples_errored"] == 0 and overall["samples_missing"] == 0
    return {
        **meta,
        "n": n,
        "complete": complete,
        "failed_counting": FAILED_COUNTING,
        "overall": overall,
        "by_data_source": {src: section(recs) for src, recs in sorted(by_source.items())},
    }


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{100 * v:.1f}" if pct else str(v)


def format_table(summary: dict[str, Any]) -> str:
    n = summary["n"]
    ks = list(summary["overall"]["pass@k"])
    head = ["data_source", "problems", f"avg@{n}", "±se"] + [f"pass@{k}" for k in ks]
    head += [f"maj@{n}", "cut%", "boxed%", "errors"]
    lines = []
    sections = [("ALL", summary["overall"])] + list(summary["by_data_source"].items())
    for name, s in sections:
        cells = [name, str(s["problems"]), _fmt(s[f"avg@{n}"]), _fmt(s[f"avg@{n}_stderr"])]
        cells += [_fmt(s["pass@k"].get(k, {}).get("value")) for k in ks]
        cells += [_fmt(s[f"maj@{n}"]), _fmt(s["truncated_share"]), _fmt(s["boxed_share"])]
        cells += [str(s["samples_errored"] + s["samples_missing"])]
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in lines])


def _served_root(base_url: str, model: str, api_key: str | None) -> str | None:
    """The path the server loaded ``model`` from (vLLM reports it as ``root`` in /v1/models), or None."""
    import httpx

    from evaluation.serve_client import chat_url

    url = chat_url(base_url).rsplit("/chat/completions", 1)[0] + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        data = httpx.get(url, timeout=10, headers=headers, trust_env=False).json()
        for entry in data.get("data", []):
            if entry.get("id") == model and isinstance(entry.get("root"), str):
                return entry["root"]
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return None


def model_identity(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """(the model part of the fingerprint, the label results are filed under)."""
    path = args.model if args.backend == "vllm" else args.model_path
    if path is None and args.backend == "serve":
        path = _served_root(args.base_url, args.model, args.api_key)
    if path is not None and Path(path).is_dir():
        try:
            ident = model_fingerprint(path)
        except FileNotFoundError as e:
            raise DataError(str(e)) from e
        return ident, (model_label(path) if args.backend == "vllm" or args.model_path else model_label(args.model))
    if args.model_path is not None:
        raise DataError(f"--model-path {args.model_path}: not a folder")
    if args.backend == "vllm" and "/" in args.model and not Path(args.model).exists():
        raise DataError(f"--model {args.model}: no such folder (a Hub id cannot be fingerprinted; download it first)")
    print(
        f"[eval] warning: the weights of {args.model!r} cannot be fingerprinted (pass --model-path FOLDER); "
        "a model retrained in place would not be noticed",
        file=sys.stderr,
    )
    return {"weights_sha256": None}, model_label(args.model)


def _sigint_is_default() -> bool:
    # A shell's background job starts with SIGINT ignored; that choice is respected.
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


def run_async_interruptibly(coro: Any) -> None:
    """Run ``coro`` on a fresh event loop; Ctrl-C cancels it and raises KeyboardInterrupt here.

    The SIGINT handler is the loop's own (``add_signal_handler``), which wakes the loop through its
    self-pipe whichever thread the kernel delivers the signal to; grading threads are told to stop too.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        grader.interrupt()
        task.cancel()

    handled = _sigint_is_default()
    if handled:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before generation started (imports, loading, engine start-up): nothing to save.
        print("\n[eval] interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    grader.clear_interrupt()
    # Everything that can fail on bad input happens before an engine or a connection is made.
    try:
        if args.n is not None and args.n < 1:
            raise DataError("--n must be >= 1")
        engine_extra = _engine_args(args.engine_arg)
        problems = load_problems(args.test_file)
        n = args.n or repeat_count(problems)
        sampling = Sampling(
            args.temperature,
            args.top_p,
            args.max_tokens,
            args.seed,
            top_k=args.top_k,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            presence_penalty=args.presence_penalty,
            frequency_penalty=args.frequency_penalty,
            stop=tuple(args.stop),
        )
        identity, label = model_identity(args)
        fingerprint = {
            "model": args.model,
            **identity,
            **grader_identity(),
            **sampling.as_dict(),
            "test_file_sha256": file_sha256(args.test_file),
        }
        out_dir = Path(args.output) if args.output else default_output(args, label)
        info = {
            "test_file": str(Path(args.test_file).resolve()),
            "backend": args.backend,
            "model_path": str(Path(args.model if args.backend == "vllm" else args.model_path or "").resolve())
            if (args.backend == "vllm" or args.model_path)
            else None,
            "base_url": args.base_url if args.backend == "serve" else None,
            "engine_args": engine_extra if args.backend == "vllm" else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        store = RunStore(out_dir, fingerprint, info)
    except (DataError, RunMismatch, RunLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _evaluate(args, store, problems, n, sampling, fingerprint, info, engine_extra)
    except CorruptSamples as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        store.close()


def _evaluate(
    args: argparse.Namespace,
    store: RunStore,
    problems: list[Problem],
    n: int,
    sampling: Sampling,
    fingerprint: dict[str, Any],
    info: dict[str, Any],
    engine_extra: dict[str, Any],
) -> int:
    out_dir = store.dir
    done = store.finished()
    jobs = []
    for prob in problems:
        missing = [i for i in range(n) if sample_key(prob.problem_id, i) not in done]
        if missing:
            jobs.append(Job(prob, missing))
    total = n * len(problems)
    todo = sum(len(j.sample_indices) for j in jobs)
    print(
        f"[eval] {len(problems)} problems x {n} samples = {total}; {total - todo} reused from {out_dir}, "
        f"{todo} to generate ({args.backend})",
        file=sys.stderr,
    )
    meta = {
        "model": args.model,
        "model_path": info["model_path"],
        "weights_sha256": fingerprint.get("weights_sha256"),
        "grader_version": fingerprint["grader_version"],
        # The effective sampling: every parameter is sent with each request (the server's and the
        # model's generation defaults never apply).
        "sampling": sampling.as_dict(),
        "test_file": info["test_file"],
        "test_file_sha256": fingerprint["test_file_sha256"],
        "backend": args.backend,
    }

    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - todo, unit="sample", disable=args.no_progress, dynamic_ncols=True)
    failed = 0
    status = 0

    def record(job: Job, completions: list[Completion] | None, error: str | None) -> None:
        nonlocal failed
        if completions is not None and len(completions) != len(job.sample_indices):
            error, completions = f"expected {len(job.sample_indices)} completions, got {len(completions)}", None
        try:
            if completions is None:
                rows = [_row(job, i, None, error, args.grade_timeout) for i in job.sample_indices]
            else:
                rows = [_row(job, i, c, None, args.grade_timeout) for i, c in zip(job.sample_indices, completions)]
        except GradingInterrupted:
            return  # Ctrl-C while grading: the problem is regenerated on the next run, never half-graded
        if completions is None:
            failed += len(rows)
            bar.set_postfix(errors=failed)
        store.append(rows)
        bar.update(len(rows))

    started = time.perf_counter()
    try:
        if jobs and args.backend == "vllm":
            from evaluation.vllm_local import InProcessEngine

            engine = InProcessEngine(args.model, engine_extra)
            try:
                engine.run(jobs, sampling, record)
            finally:
                engine.shutdown()
        elif jobs:
            from evaluation.serve_client import RetryPolicy, run_jobs

            # One grading thread: grading stays off the event loop, rows are written one problem at a
            # time, and Ctrl-C has a single thread to stop (grader.interrupt()).
            grading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grade")

            async def record_async(job: Job, comps: list[Completion] | None, error: str | None) -> None:
                await asyncio.get_running_loop().run_in_executor(grading, record, job, comps, error)

            try:
                run_async_interruptibly(
                    run_jobs(
                        jobs,
                        base_url=args.base_url,
                        model=args.model,
                        sampling=sampling,
                        concurrency=args.concurrency,
                        on_done=record_async,
                        retry=RetryPolicy(max_retries=args.max_retries, base_delay_s=args.retry_delay),
                        request_timeout_s=args.request_timeout,
                        api_key=args.api_key,
                    )
                )
            finally:
                grading.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
        grader.interrupt()
        print("\n[eval] interrupted: finished samples are saved; run the same command to resume", file=sys.stderr)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started

    summary = build_summary(store, problems, n, meta)
    summary["generation_seconds_this_run"] = elapsed
    summary["interrupted"] = status == EXIT_INTERRUPTED
    path = store.write_summary(summary)
    print(format_table(summary))
    print(f"[eval] samples: {store.samples_path}\n[eval] summary: {path}", file=sys.stderr)
    if status:
        return status
    if not summary["complete"]:
        o = summary["overall"]
        print(
            f"[eval] WARNING: {o['samples_errored']} sample(s) failed and {o['samples_missing']} are missing "
            f"({o['problems_failed']} problem(s)); avg@{n} counts them as incorrect. Rerun the same command to "
            "retry them.",
            file=sys.stderr,
        )
        return EXIT_ERRORS
    return 0


if __name__ == "__main__":
    sys.exit(main())
