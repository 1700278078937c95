"""The paper-style results table: one row per model, Avg@n per benchmark, in-domain and out-of-domain
averages.

    python -m evaluation.paper_table outputs/eval/psft/global_step_500 [outputs/eval/sft/global_step_500 ...]

Each folder holds ``<benchmark>/summary.json`` as written by ``scripts/eval.sh`` (``evaluation.eval
--output DIR/<benchmark>``). Columns follow the paper: AIME24, AIME25, AMC23, MATH-500, Minerva,
OlympiadBench and their average; GPQA-Diamond, ARC-Challenge, TruthfulQA, IFEval, MMLU-Pro, SuperGPQA,
HeadQA (arXiv v2's out-of-domain suite) and their average. The averages are unweighted
means over the benchmarks present (each benchmark counts once, as in the paper). A value from an
incomplete evaluation is marked ``*`` and its average too; a missing benchmark is ``-`` and left out
of the average (the header says how many went in).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IN_DOMAIN = [
    ("aime24", "AIME24"),
    ("aime25", "AIME25"),
    ("amc23", "AMC23"),
    ("math500", "MATH-500"),
    ("minerva", "Minerva"),
    ("olympiadbench", "Olympiad"),
]
# arXiv v2's out-of-domain suite, in its order (IFEval: the strict prompt-level accuracy, the grader's
# `correct`).
OUT_OF_DOMAIN = [
    ("gpqa_diamond", "GPQA-D"),
    ("arc_challenge", "ARC-C"),
    ("truthfulqa", "TruthfulQA"),
    ("ifeval", "IFEval"),
    ("mmlu_pro", "MMLU-Pro"),
    ("supergpqa", "SuperGPQA"),
    ("headqa", "HeadQA"),
]


def read_scores(folder: Path) -> dict[str, tuple[float, bool, int]]:
    """benchmark -> (avg@n, complete, n) from ``folder/<benchmark>/summary.json``."""
    scores = {}
    for name, _ in IN_DOMAIN + OUT_OF_DOMAIN:
        path = folder / name / "summary.json"
        if not path.is_file():
            continue
        summary: dict[str, Any] = json.loads(path.read_text())
        n = summary["n"]
        scores[name] = (float(summary["overall"][f"avg@{n}"]), bool(summary.get("complete")), n)
    return scores


def _cell(value: float | None, complete: bool = True) -> str:
    return "-" if value is None else f"{100 * value:.1f}" + ("" if complete else "*")


def table(folders: list[Path]) -> str:
    head = ["model"] + [label for _, label in IN_DOMAIN] + ["ID avg"] + [label for _, label in OUT_OF_DOMAIN]
    head += ["OOD avg"]
    body = []
    for folder in folders:
        scores = read_scores(folder)
        row = [_label(folder)]
        for group in (IN_DOMAIN, OUT_OF_DOMAIN):
            present = [scores[name] for name, _ in group if name in scores]
            row += [_cell(*scores[name][:2]) if name in scores else "-" for name, _ in group]
            if present:
                avg = sum(v for v, _, _ in present) / len(present)
                mark = "" if len(present) == len(group) else f" ({len(present)}/{len(group)})"
                row.append(_cell(avg, all(c for _, c, _ in present)) + mark)
            else:
                row.append("-")
        body.append(row)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    lines.append("Avg@n in %; * = evaluation incomplete (rerun it); - = not evaluated.")
    return "\n".join(lines)


def _label(folder: Path) -> str:
    parts = folder.resolve().parts
    return "/".join(parts[-2:]) if parts[-1].startswith("global_step_") else parts[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="one results folder per model")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(table(args.folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
