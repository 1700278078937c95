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
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import grader
from evaluation.data import DataError, Problem, load_problems, repeat_count
from evaluation.grader import GradingInterrupted, grade_fields
from evaluation.identity import grader_identity, model_identity
from evaluation.jobs import Backend, Completion, Job, Sampling, plan_jobs
from evaluation.presets import PRESETS, Effective
from evaluation.presets import resolve as resolve_preset
from evaluation.store import CorruptSamples, RunLocked, RunMismatch, RunStore
from evaluation.summary import build_summary, format_table
from recipe.psft.exit_codes import BAD_INPUT, INCOMPLETE, INTERRUPTED, OK
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
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="pin temperature, top-p, max tokens and n per benchmark (evaluation/presets.py): paper = 0.7/0.95/"
        "10240, n 32 on AIME/AMC and 8 elsewhere, IFEval 4096 tokens; r1 = 0.6/0.95/32768; greedy = 0/1/2048, "
        "n 1. Explicit flags override it",
    )
    p.add_argument("--temperature", type=float, default=None, help="0.7 unless --preset says otherwise")
    p.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None, help="0.95 (or the preset's)")
    p.add_argument(
        "--max_tokens", "--max-tokens", dest="max_tokens", type=int, default=None, help="10240 (or the preset's)"
    )
    p.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=-1, help="-1: off (neutral)")
    p.add_argument("--min_p", "--min-p", dest="min_p", type=float, default=0.0)
    p.add_argument("--repetition_penalty", "--repetition-penalty", dest="repetition_penalty", type=float, default=1.0)
    p.add_argument("--presence_penalty", "--presence-penalty", dest="presence_penalty", type=float, default=0.0)
    p.add_argument("--frequency_penalty", "--frequency-penalty", dest="frequency_penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable); none by default")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples per problem (default: the preset's, else how often the file repeats a problem)",
    )
    p.add_argument("--seed", type=int, default=None, help="base seed; per-problem seeds derive from it")
    p.add_argument("--backend", choices=("serve", "vllm"), default="serve")
    p.add_argument("--base-url", "--base_url", dest="base_url", default="http://127.0.0.1:8000")
    p.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY") or None,
        help="serve backend: the server's API key (default: $VLLM_API_KEY, the variable the server reads; "
        "prefer it, argv is visible to other users); sent only over https or to this machine",
    )
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


def sampling_of(args: argparse.Namespace) -> Sampling:
    return Sampling(
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


def apply_preset(args: argparse.Namespace, problems: list[Problem]) -> Effective:
    """Fill temperature, top_p and max_tokens in ``args`` from the flags, else the preset for the file's
    benchmark (its data_source values), else the defaults; the effective values and their origin."""
    settings = resolve_preset(
        args.preset, {p.data_source for p in problems}, args.temperature, args.top_p, args.max_tokens, args.n
    )
    args.temperature, args.top_p, args.max_tokens = settings.temperature, settings.top_p, settings.max_tokens
    return settings


@dataclass
class Run:
    """What is settled before an engine starts: the problems, n, the sampling, the fingerprint, the store."""

    problems: list[Problem]
    n: int
    sampling: Sampling
    fingerprint: dict[str, Any]
    info: dict[str, Any]
    engine_args: dict[str, Any]
    store: RunStore


def prepare_run(args: argparse.Namespace) -> Run:
    """Read and check everything that can fail on bad input (raises DataError, RunMismatch, RunLocked)."""
    if args.n is not None and args.n < 1:
        raise DataError("--n must be >= 1")
    engine_args = _engine_args(args.engine_arg)
    problems = load_problems(args.test_file)
    settings = apply_preset(args, problems)
    # IFEval ground truths are checked against lm-eval's registry now, not after the engine has started.
    grader.validate_ground_truths([(f"{args.test_file}: problem {p.problem_id}", p.ground_truth) for p in problems])
    n = settings.n or repeat_count(problems)
    sampling = sampling_of(args)
    identity, label = model_identity(args.backend, args.model, args.model_path, args.base_url, args.api_key)
    fingerprint = {
        "model": args.model,
        **identity,
        **grader_identity(),
        **sampling.as_dict(),
        "test_file_sha256": file_sha256(args.test_file),
    }
    out_dir = Path(args.output) if args.output else default_output(args, label)
    local_model = args.backend == "vllm" or args.model_path
    info = {
        "test_file": str(Path(args.test_file).resolve()),
        "backend": args.backend,
        "model_path": str(Path(args.model if args.backend == "vllm" else args.model_path).resolve())
        if local_model
        else None,
        "base_url": _without_credentials(args.base_url) if args.backend == "serve" else None,
        "engine_args": engine_args if args.backend == "vllm" else None,
        "preset": args.preset,
        "settings_origin": settings.origin,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    store = RunStore(out_dir, fingerprint, info)
    return Run(problems, n, sampling, fingerprint, info, engine_args, store)


def _without_credentials(url: str) -> str:
    """``url`` without ``user:password@``: run records hold no secrets."""
    import httpx

    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def sample_row(job: Job, idx: int, comp: Completion | None, error: str | None, grade_timeout: float) -> dict[str, Any]:
    """One ``samples.jsonl`` row: the completion graded, or the error that replaced it."""
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
    row.update(
        response=comp.text,
        **grade_fields(comp.text, prob.ground_truth, timeout_s=grade_timeout),
        completion_tokens=comp.completion_tokens,
        finish_reason=comp.finish_reason,
        error=None,
    )
    return row


class Recorder:
    """The backends' ``on_done``: grade a finished job, append its rows (durably), move the progress bar."""

    def __init__(self, store: RunStore, bar: Any, grade_timeout: float):
        self.store, self.bar, self.grade_timeout = store, bar, grade_timeout
        self.failed = 0

    def __call__(self, job: Job, completions: list[Completion] | None, error: str | None) -> None:
        slots = job.sample_indices
        if completions is not None and len(completions) != len(slots):
            error, completions = f"expected {len(slots)} completions, got {len(completions)}", None
        try:
            if completions is None:
                rows = [sample_row(job, i, None, error, self.grade_timeout) for i in slots]
            else:
                rows = [sample_row(job, i, c, None, self.grade_timeout) for i, c in zip(slots, completions)]
        except GradingInterrupted:
            return  # Ctrl-C while grading: the problem is regenerated on the next run, never half-graded
        if completions is None:
            self.failed += len(rows)
            self.bar.set_postfix(errors=self.failed)
        self.store.append(rows)
        self.bar.update(len(rows))


def open_backend(args: argparse.Namespace, engine_args: dict[str, Any]) -> Backend:
    if args.backend == "vllm":
        from evaluation.vllm_local import InProcessEngine

        return InProcessEngine(args.model, engine_args)
    from evaluation.serve_client import RetryPolicy, ServeBackend

    return ServeBackend(
        base_url=args.base_url,
        model=args.model,
        concurrency=args.concurrency,
        retry=RetryPolicy(max_retries=args.max_retries, base_delay_s=args.retry_delay),
        request_timeout_s=args.request_timeout,
        api_key=args.api_key,
        on_interrupt=grader.interrupt,
    )


def generate(args: argparse.Namespace, run: Run, jobs: list[Job], total: int) -> tuple[int, float]:
    """Run the jobs on the chosen backend, each finished problem graded and written at once.
    Returns (exit status so far, seconds spent)."""
    from tqdm import tqdm

    todo = sum(len(j.sample_indices) for j in jobs)
    bar = tqdm(total=total, initial=total - todo, unit="sample", disable=args.no_progress, dynamic_ncols=True)
    status = OK
    started = time.perf_counter()
    try:
        if jobs:
            backend = open_backend(args, run.engine_args)
            try:
                backend.run(jobs, run.sampling, Recorder(run.store, bar, args.grade_timeout))
            finally:
                backend.shutdown()
    except KeyboardInterrupt:
        status = INTERRUPTED
        grader.interrupt()
        print("\n[eval] interrupted: finished samples are saved; run the same command to resume", file=sys.stderr)
    finally:
        bar.close()
    return status, time.perf_counter() - started


def summary_meta(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    return {
        "model": args.model,
        "model_path": run.info["model_path"],
        "weights_sha256": run.fingerprint.get("weights_sha256"),
        "grader_version": run.fingerprint["grader_version"],
        # The effective sampling: every parameter is sent with each request (the server's and the
        # model's generation defaults never apply).
        "sampling": run.sampling.as_dict(),
        "preset": run.info["preset"],
        "settings_origin": run.info["settings_origin"],  # flag / preset <name> / default / file, per value
        "test_file": run.info["test_file"],
        "test_file_sha256": run.fingerprint["test_file_sha256"],
        "backend": args.backend,
    }


def finish_run(args: argparse.Namespace, run: Run, status: int, seconds: float) -> int:
    """Write summary.json, print the table; the exit status."""
    summary = build_summary(run.store, run.problems, run.n, summary_meta(args, run))
    summary["generation_seconds_this_run"] = seconds
    summary["interrupted"] = status == INTERRUPTED
    path = run.store.write_summary(summary)
    print(format_table(summary))
    print(f"[eval] samples: {run.store.samples_path}\n[eval] summary: {path}", file=sys.stderr)
    if status:
        return status
    if not summary["complete"]:
        o = summary["overall"]
        print(
            f"[eval] WARNING: {o['samples_errored']} sample(s) failed and {o['samples_missing']} are missing "
            f"({o['problems_failed']} problem(s)); avg@{run.n} counts them as incorrect. Rerun the same command to "
            "retry them.",
            file=sys.stderr,
        )
        return INCOMPLETE
    return OK


def evaluate(args: argparse.Namespace, run: Run) -> int:
    jobs = plan_jobs(run.problems, run.n, run.store.finished())
    total = run.n * len(run.problems)
    todo = sum(len(j.sample_indices) for j in jobs)
    print(
        f"[eval] {len(run.problems)} problems x {run.n} samples = {total}; {total - todo} reused from "
        f"{run.store.dir}, {todo} to generate ({args.backend})",
        file=sys.stderr,
    )
    status, seconds = generate(args, run, jobs, total)
    return finish_run(args, run, status, seconds)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before generation started (imports, loading, engine start-up): nothing to save.
        print("\n[eval] interrupted", file=sys.stderr)
        return INTERRUPTED


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    grader.clear_interrupt()
    # Everything that can fail on bad input happens before an engine or a connection is made.
    try:
        run = prepare_run(args)
    except (DataError, RunMismatch, RunLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    try:
        return evaluate(args, run)
    except CorruptSamples as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    finally:
        run.store.close()


if __name__ == "__main__":
    sys.exit(main())
