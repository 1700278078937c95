"""summary.json and the table printed at the end of an evaluation: overall and per-``data_source``
Avg@n (failed and missing samples count as incorrect), pass@k, maj@n, truncation and boxed shares,
token counts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from evaluation.data import Problem
from evaluation.metrics import FAILED_COUNTING, summarize
from evaluation.store import RunStore, sample_key


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
