"""Grade without a model: stored generations, generations from another stack, or a whole evaluation
folder again after a grader change.

    # one JSON line per response: {"row": N, "response": "..."}, N = the test file's row (from 1)
    python -m evaluation.grade --test-file test_ifeval.parquet --responses responses.jsonl
    # an evaluation folder's samples.jsonl graded again, into a new folder with a new summary.json
    python -m evaluation.grade --regrade outputs/eval/MODEL/aime24_t0.7_p0.95_m10240 [--out NEWDIR]

``--responses`` prints one JSON line per response, in input order: ``row``, ``data_source``,
``correct`` (IFEval: strict prompt-level), ``grading_failure`` (null, or "timeout"/"memory"/"crashed"/
"error": counted incorrect), ``extracted_answer`` and ``boxed`` (math and letter answers), and for IFEval
``ifeval`` (per-instruction ``strict`` and ``loose``, ``loose_correct``, ``instruction_id_list``); then
one ``{"summary": {...}}`` line: counts, accuracy, grading failures, IFEval's four accuracies, the grader
version.

``--regrade DIR`` reads ``DIR/run.json`` and ``DIR/samples.jsonl``, grades every generated sample again
with this grader (against the ground truth its row holds) and writes ``NEWDIR`` (default
``DIR-regrade-v<grader version>``): ``run.json`` (DIR's fingerprint with this grader's version, plus
``regraded_from``), ``samples.jsonl`` and ``summary.json``. Failed generations are copied as they are.
NEWDIR is an evaluation folder like any other: ``python -m evaluation.eval`` with the same settings and
``--output NEWDIR`` resumes it. DIR is locked while it is read and left unchanged.

Exit status: 0 graded (grading failures are recorded, not fatal), 2 bad input (named), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from evaluation import grader
from evaluation.data import Problem, load_problems
from evaluation.identity import grader_identity
from evaluation.ifeval import checker_versions, parse_ground_truth
from evaluation.store import RUN_FILE, SAMPLES_FILE, SUMMARY_FILE, CorruptSamples, RunLocked, RunMismatch, RunStore
from evaluation.summary import build_summary, format_table, ifeval_accuracy
from recipe.psft.exit_codes import BAD_INPUT, INTERRUPTED, OK
from recipe.psft.files import file_sha256
from recipe.psft.rows import DataError, listing, read_records

# Summary keys of an evaluation that describe the run rather than the grading (kept by a regrade).
RUN_META_KEYS = ("model", "model_path", "weights_sha256", "sampling", "test_file", "test_file_sha256", "backend")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.grade", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--responses", help="JSONL: one {'row': N, 'response': '...'} per line (with --test-file)")
    what.add_argument("--regrade", metavar="DIR", help="an evaluation folder (run.json + samples.jsonl)")
    p.add_argument(
        "--test-file",
        "--test_file",
        dest="test_file",
        help="the test file (.parquet/.jsonl/...); with --regrade: default the one DIR/run.json names",
    )
    p.add_argument("--out", help="--regrade: the new folder (default DIR-regrade-v<grader version>)")
    p.add_argument("--n", type=int, default=None, help="--regrade: samples per problem (default: DIR's summary)")
    p.add_argument("--grade-timeout", type=float, default=grader.DEFAULT_TIMEOUT_S, help="seconds per check")
    p.add_argument(
        "--jobs", type=int, default=grader.DEFAULT_MAX_HELPERS, help="responses graded at once (one helper each)"
    )
    return p


# --------------------------------------------------------------------------------------- --responses


def _problems_by_row(test_file: str) -> dict[int, Problem]:
    """Row number (from 1, as every error message counts them) -> its problem."""
    problems = load_problems(test_file)  # validates the file; DataError names file, row and key
    numbers = [number for number, _ in read_records(test_file)]
    return {numbers[pos]: prob for prob in problems for pos in prob.rows}


def read_responses(path: str, rows: dict[int, Problem], test_file: str) -> list[tuple[int, str]]:
    """(row, response) per line of ``path``; every bad line is named (DataError) before anything is graded."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--responses {path}: no such file")
    out: list[tuple[int, str]] = []
    bad: list[str] = []
    last = max(rows)
    for lineno, line in enumerate(p.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except ValueError as e:
            bad.append(f"{where}: not valid JSON ({e})")
            continue
        if not isinstance(item, dict):
            bad.append(f"{where}: expected an object {{'row': N, 'response': '...'}}, got {type(item).__name__}")
            continue
        row, response = item.get("row"), item.get("response")
        if not isinstance(row, int) or isinstance(row, bool):
            bad.append(f"{where}: 'row': {row!r:.50} is not a row number (an integer from 1)")
        elif row not in rows:
            bad.append(f"{where}: 'row': {row} is not a row of {test_file} (rows 1..{last})")
        if not isinstance(response, str):
            bad.append(f"{where}: 'response': expected a string, got {type(response).__name__} {response!r:.50}")
        if not bad or not bad[-1].startswith(where):
            out.append((row, response))
    if bad:
        raise DataError(listing(f"{path}: {len(bad)} line(s) cannot be graded", bad))
    if not out:
        raise DataError(f"--responses {path}: no responses")
    return out


def response_line(row: int, prob: Problem, fields: dict[str, Any]) -> dict[str, Any]:
    """The printed line of one graded response (IFEval's verdicts name their instructions)."""
    line = {"row": row, "data_source": prob.data_source, **fields}
    spec = parse_ground_truth(prob.ground_truth)
    if spec is not None:
        line.setdefault("ifeval", None)  # None: the check hit a limit (grading_failure says which)
        if line["ifeval"] is not None:
            line["ifeval"]["instruction_id_list"] = list(spec.instruction_id_list)
    return line


def _graded(items: list[tuple[Any, str, str]], timeout_s: float, jobs: int) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(key, grade_fields) per (key, response, ground truth), in input order, ``jobs`` at a time."""
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="grade") as pool:
        futures = [(key, pool.submit(grader.grade_fields, resp, gt, timeout_s)) for key, resp, gt in items]
        try:
            for key, fut in futures:
                yield key, fut.result()
        except BaseException:
            grader.interrupt()  # the other threads stop within 0.2 s instead of grading on
            for _, fut in futures:
                fut.cancel()
            raise


def responses_summary(lines: list[dict[str, Any]], test_file: str) -> dict[str, Any]:
    """The closing line of ``--responses``: overall and per data source."""

    def part(items: list[dict[str, Any]]) -> dict[str, Any]:
        correct = sum(bool(x["correct"]) for x in items)
        out: dict[str, Any] = {
            "responses": len(items),
            "correct": correct,
            "accuracy": correct / len(items),
            "grading_timeouts": sum(x["grading_failure"] == "timeout" for x in items),
            "grading_failed": sum(x["grading_failure"] is not None for x in items),
        }
        samples = []
        for x in items:
            if "ifeval" not in x:
                continue
            v = x["ifeval"]
            none = [False] * len(v["instruction_id_list"]) if v else [False] * x["_instructions"]
            samples.append((v["strict"], v["loose"]) if v else (none, none))
        if samples:
            out["ifeval"] = ifeval_accuracy(samples)
        return out

    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for x in lines:
        by_source[x["data_source"]].append(x)
    summary = {
        "test_file": str(Path(test_file).resolve()),
        "test_file_sha256": file_sha256(test_file),
        **grader_identity(),
        **part(lines),
        "by_data_source": {src: part(items) for src, items in sorted(by_source.items())},
        "grading_failures": [{"row": x["row"], "failure": x["grading_failure"]} for x in lines if x["grading_failure"]],
    }
    if any("ifeval" in x for x in lines):
        summary["ifeval_checkers"] = checker_versions()
    return summary


def grade_responses(args: argparse.Namespace) -> int:
    if not args.test_file:
        raise DataError("--responses needs --test-file (the file whose rows the responses answer)")
    rows = _problems_by_row(args.test_file)
    todo = read_responses(args.responses, rows, args.test_file)
    used = {row: rows[row] for row, _ in todo}
    grader.validate_ground_truths([(f"{args.test_file}: row {r}", p.ground_truth) for r, p in sorted(used.items())])
    lines = []
    items = [(i, resp, rows[row].ground_truth) for i, (row, resp) in enumerate(todo)]
    for i, fields in _graded(items, args.grade_timeout, args.jobs):
        prob = rows[todo[i][0]]
        line = response_line(todo[i][0], prob, fields)
        print(json.dumps(line, ensure_ascii=False), flush=True)
        spec = parse_ground_truth(prob.ground_truth)
        lines.append({**line, "_instructions": len(spec.instruction_id_list) if spec else 0})
    print(json.dumps({"summary": responses_summary(lines, args.test_file)}, ensure_ascii=False), flush=True)
    return OK


# ------------------------------------------------------------------------------------------ --regrade


def _problems_from_rows(rows: list[dict[str, Any]]) -> list[Problem]:
    """Problems as the samples name them (when the test file is gone): samples never generated cannot be
    counted then."""
    seen: dict[str, Problem] = {}
    for row in rows:
        key = json.dumps(row["problem_id"])
        if key not in seen:
            seen[key] = Problem(row["problem_id"], str(row.get("data_source")), [], str(row.get("ground_truth")))
    return list(seen.values())


def _regrade_problems(args: argparse.Namespace, run: dict[str, Any], rows: list[dict[str, Any]]) -> list[Problem]:
    test_file = args.test_file or run.get("test_file")
    want = run.get("fingerprint", {}).get("test_file_sha256")
    if test_file and Path(test_file).is_file():
        if args.test_file is None and want and file_sha256(test_file) != want:
            raise DataError(
                f"{test_file} changed since the evaluation (sha256 {file_sha256(test_file)[:12]}..., was "
                f"{want[:12]}...): pass --test-file with the file it used"
            )
        return load_problems(test_file)
    if args.test_file:
        raise DataError(f"--test-file {args.test_file}: no such file")
    print(
        f"[grade] warning: the test file {test_file} is gone; problems are taken from samples.jsonl, so samples "
        "that were never generated are not counted as missing",
        file=sys.stderr,
    )
    return _problems_from_rows(rows)


def regrade(args: argparse.Namespace) -> int:
    src = Path(args.regrade)
    run_path = src / RUN_FILE
    if not run_path.is_file() or not (src / SAMPLES_FILE).is_file():
        raise DataError(f"--regrade {src}: not an evaluation folder (needs {RUN_FILE} and {SAMPLES_FILE})")
    try:
        run = json.loads(run_path.read_text())
        old_fp = dict(run["fingerprint"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{run_path}: not a run.json written by evaluation.eval ({e})") from None
    old_summary_path = src / SUMMARY_FILE
    old_summary = json.loads(old_summary_path.read_text()) if old_summary_path.is_file() else {}
    out = Path(args.out) if args.out else src.parent / f"{src.name}-regrade-v{grader.GRADER_VERSION}"
    if out.resolve() == src.resolve():
        raise DataError("--out must be another folder than --regrade (the original stays as it was)")
    if (out / SAMPLES_FILE).exists():
        raise DataError(f"--out {out}: already holds {SAMPLES_FILE}; delete it or choose another --out")

    with RunStore(src, old_fp) as old:  # locked: no evaluation appends while it is read
        latest = old.latest()
    rows = [latest[k] for k in sorted(latest)]
    if not rows:
        raise DataError(f"{src / SAMPLES_FILE}: no samples to grade")
    problems = _regrade_problems(args, run, rows)
    n = args.n or old_summary.get("n") or 1 + max(int(r["sample_index"]) for r in rows)
    grader.validate_ground_truths([(f"{src}: problem {r['problem_id']}", r["ground_truth"]) for r in rows])

    fingerprint = {**old_fp, **grader_identity()}
    info = {k: v for k, v in run.items() if k != "fingerprint"}
    info["regraded_from"] = {"folder": str(src.resolve()), "grader_version": old_fp.get("grader_version")}
    info["regraded"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    todo = [(i, r["response"], r["ground_truth"]) for i, r in enumerate(rows) if r.get("error") is None]
    started = time.perf_counter()
    with RunStore(out, fingerprint, info) as new:
        new.append([r for r in rows if r.get("error") is not None])  # failed generations, as they were
        batch = []
        for i, fields in _graded(todo, args.grade_timeout, args.jobs):
            stale = ("extracted_answer", "boxed", "correct", "grading_failure", "grading_detail", "ifeval")
            base = {k: v for k, v in rows[i].items() if k not in stale}
            batch.append({**base, **fields})
            if len(batch) >= 64:
                new.append(batch)
                batch = []
        new.append(batch)
        meta = {k: old_summary.get(k, old_fp.get(k)) for k in RUN_META_KEYS}
        meta["grader_version"] = grader.GRADER_VERSION
        meta["regraded_from"] = info["regraded_from"] | {"avg": _old_avg(old_summary)}
        summary = build_summary(new, problems, n, meta)
        summary["regrade_seconds"] = time.perf_counter() - started
        path = new.write_summary(summary)
    print(format_table(summary))
    print(f"[grade] {len(todo)} sample(s) graded again into {out}", file=sys.stderr)
    print(f"[grade] samples: {out / SAMPLES_FILE}\n[grade] summary: {path}", file=sys.stderr)
    return OK


def _old_avg(summary: dict[str, Any]) -> float | None:
    n = summary.get("n")
    return summary.get("overall", {}).get(f"avg@{n}") if n else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be >= 1", file=sys.stderr)
        return BAD_INPUT
    grader.clear_interrupt()
    try:
        return regrade(args) if args.regrade else grade_responses(args)
    except (DataError, RunMismatch, RunLocked, CorruptSamples) as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("\n[grade] interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
