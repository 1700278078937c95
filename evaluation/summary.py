"""summary.json and the table printed at the end of an evaluation: overall and per-``data_source``
Avg@n (failed and missing samples count as incorrect), pass@k, maj@n, truncation and boxed shares,
token counts; samples whose grading hit a limit (time-out, memory) counted incorrect and listed apart;
IFEval's prompt- and instruction-level accuracies, strict and loose."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from evaluation.data import Problem
from evaluation.ifeval import checker_versions, parse_ground_truth
from evaluation.metrics import FAILED_COUNTING, summarize
from evaluation.store import RunStore, sample_key


def build_summary(store: RunStore, problems: list[Problem], n: int, meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json: overall and per-data_source metrics over the samples with index < n."""
    latest = store.latest()
    per_problem: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for prob in problems:
        rec: dict[str, Any] = {"source": prob.data_source, "correct": [], "answers": [], "finish": [], "boxed": []}
        rec["errors"] = 0
        rec["missing"] = 0
        rec["tokens"] = []
        rec["grading_failures"] = []  # failure kind per graded sample whose check hit a limit
        rec["ifeval"] = []  # (strict per instruction, loose per instruction) per graded IFEval sample
        spec = parse_ground_truth(prob.ground_truth)
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
                failure = row.get("grading_failure")
                if failure:
                    rec["grading_failures"].append(failure)
                    where = {"problem_id": prob.problem_id, "sample_index": idx, "data_source": prob.data_source}
                    failures.append({**where, "failure": failure})
                if spec is not None:
                    rec["ifeval"].append(_ifeval_sample(row, len(spec.instruction_id_list)))
        per_problem.append(rec)

    def section(recs: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize(recs, n)
        out["samples_missing"] = sum(r["missing"] for r in recs)
        kinds = [f for r in recs for f in r["grading_failures"]]
        out["samples_grading_timeout"] = kinds.count("timeout")
        out["samples_grading_failed"] = len(kinds)
        tokens = [t for r in recs for t in r["tokens"]]
        out["completion_tokens_mean"] = sum(tokens) / len(tokens) if tokens else None
        out["completion_tokens_total"] = sum(tokens)
        samples = [s for r in recs for s in r["ifeval"]]
        if samples:
            out["ifeval"] = ifeval_accuracy(samples)
            if out["samples_graded"] == len(samples):
                out[f"maj@{n}"] = None  # no answer to vote on: IFEval grades instructions, not an answer
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
        "grading_failure_counting": GRADING_FAILURE_COUNTING,
        "overall": overall,
        "by_data_source": {src: section(recs) for src, recs in sorted(by_source.items())},
        "grading_failures": failures,
        **({"ifeval_checkers": checker_versions()} if any(r["ifeval"] for r in per_problem) else {}),
    }


GRADING_FAILURE_COUNTING = (
    "a sample whose grading hit a limit (grading_failure 'timeout': no verdict within --grade-timeout; "
    "'memory': the helper's memory limit; 'crashed': the helper died; 'error': the checker raised) is "
    "counted incorrect everywhere (and its IFEval instructions as not followed); each is listed in "
    "grading_failures and counted in samples_grading_timeout / samples_grading_failed. "
    "python -m evaluation.grade --regrade DIR grades them again."
)


def _ifeval_sample(row: dict[str, Any], count: int) -> tuple[list[bool], list[bool]]:
    """A graded IFEval sample's (strict, loose) verdicts; a sample without them (its grading hit a
    limit) followed none of its ``count`` instructions."""
    verdicts = row.get("ifeval")
    if isinstance(verdicts, dict) and len(verdicts.get("strict") or []) == count:
        return [bool(x) for x in verdicts["strict"]], [bool(x) for x in verdicts["loose"]]
    return [False] * count, [False] * count


def ifeval_accuracy(samples: list[tuple[list[bool], list[bool]]]) -> dict[str, Any]:
    """The official IFEval numbers over graded samples: prompt-level accuracy (the share of samples that
    follow every instruction) and instruction-level accuracy (the share of all instructions followed),
    strict and loose."""
    strict = [s for s, _ in samples]
    loose = [lo for _, lo in samples]
    instructions = sum(len(s) for s in strict)
    return {
        "prompt_level_strict_acc": sum(all(s) for s in strict) / len(samples),
        "inst_level_strict_acc": sum(sum(s) for s in strict) / instructions,
        "prompt_level_loose_acc": sum(all(lo) for lo in loose) / len(samples),
        "inst_level_loose_acc": sum(sum(lo) for lo in loose) / instructions,
        "samples": len(samples),
        "instructions": instructions,
    }


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{100 * v:.1f}" if pct else str(v)


def format_table(summary: dict[str, Any]) -> str:
    n = summary["n"]
    ks = list(summary["overall"]["pass@k"])
    head = ["data_source", "problems", f"avg@{n}", "±se"] + [f"pass@{k}" for k in ks]
    head += [f"maj@{n}", "cut%", "boxed%", "errors", "grade-fail"]
    lines = []
    sections = [("ALL", summary["overall"])] + list(summary["by_data_source"].items())
    for name, s in sections:
        cells = [name, str(s["problems"]), _fmt(s[f"avg@{n}"]), _fmt(s[f"avg@{n}_stderr"])]
        cells += [_fmt(s["pass@k"].get(k, {}).get("value")) for k in ks]
        cells += [_fmt(s[f"maj@{n}"]), _fmt(s["truncated_share"]), _fmt(s["boxed_share"])]
        cells += [str(s["samples_errored"] + s["samples_missing"]), str(s.get("samples_grading_failed", 0))]
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in lines]
    for name, s in sections:
        ife = s.get("ifeval")
        if ife and name != "ALL":
            out.append(
                f"IFEval {name}: prompt-level strict {_fmt(ife['prompt_level_strict_acc'])}, "
                f"loose {_fmt(ife['prompt_level_loose_acc'])}; instruction-level strict "
                f"{_fmt(ife['inst_level_strict_acc'])}, loose {_fmt(ife['inst_level_loose_acc'])} "
                f"({ife['samples']} samples)"
            )
    failed = summary["overall"].get("samples_grading_failed", 0)
    if failed:
        timeouts = summary["overall"].get("samples_grading_timeout", 0)
        out.append(
            f"{failed} sample(s) hit a grading limit ({timeouts} time-out(s)); counted incorrect, listed in "
            "summary.json's grading_failures"
        )
    return "\n".join(out)
