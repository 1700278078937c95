"""Read and validate a test file (parquet, JSONL, JSON or CSV in the prepare_data.py layout) into problems.

Validation happens here, before any model is loaded, so a bad file fails in a second with the file,
row and key named rather than after minutes of engine start-up. Reading and the prompt checks are
:mod:`recipe.psft.rows`, the ones ``prepare_data.py`` and the trainer use.

Files that repeat each problem k times (the original's way to get Avg@k) are grouped by prompt; the
repeat count is kept so that ``--n`` can default to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe.psft.rows import (
    DATA_SOURCE,
    EXTRA_INFO,
    GROUND_TRUTH,
    PROMPT,
    REWARD_MODEL,
    DataError,
    as_messages,
    columns_of,
    prompt_problem,
    read_records,
    row_error,
)

__all__ = ["DataError", "Problem", "load_problems", "repeat_count"]

REQUIRED_COLUMNS = (PROMPT, REWARD_MODEL)


@dataclass
class Problem:
    """One distinct prompt with its reference answer."""

    problem_id: int | str
    data_source: str
    messages: list[dict[str, str]]
    ground_truth: str
    rows: list[int] = field(default_factory=list)  # 0-based positions in the file of the rows holding this prompt


def _ground_truth(path: Path, number: int, reward_model: Any) -> str:
    if not isinstance(reward_model, dict):
        raise row_error(
            str(path), number, REWARD_MODEL, f"must be a struct with 'ground_truth', got {reward_model!r:.200}"
        )
    gt = reward_model.get("ground_truth")
    if gt is None or (isinstance(gt, str) and not gt.strip()):
        raise row_error(str(path), number, GROUND_TRUTH, "ground truth is missing or empty")
    if isinstance(gt, (list, dict)):
        raise row_error(str(path), number, GROUND_TRUTH, f"ground truth must be a string, got {type(gt).__name__}")
    return str(gt)


def load_problems(path: str | Path) -> list[Problem]:
    """Problems in file order, duplicates (same prompt) grouped. Raises :class:`DataError`."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no rows")
    columns = columns_of(records)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {columns}")
    groups: dict[str, Problem] = {}
    indices: dict[str, Any] = {}
    for i, (number, row) in enumerate(records):
        if not isinstance(row, dict):
            raise row_error(str(path), number, "<row>", f"expected an object, got {type(row).__name__}")
        for col in REQUIRED_COLUMNS:
            if row.get(col) is None:
                raise row_error(str(path), number, col, "missing")
        reason = prompt_problem(row[PROMPT])
        if reason:
            raise row_error(str(path), number, PROMPT, reason)
        messages = as_messages(row[PROMPT])
        gt = _ground_truth(path, number, row[REWARD_MODEL])
        source = row.get(DATA_SOURCE)
        source = str(source) if source not in (None, "") else path.stem
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key in groups:
            prob = groups[key]
            if prob.ground_truth != gt:
                raise DataError(
                    f"{path}: rows {records[prob.rows[0]][0]} and {number}: same prompt, different ground truths "
                    f"({prob.ground_truth!r} vs {gt!r})"
                )
            prob.rows.append(i)
            continue
        extra = row.get(EXTRA_INFO) or {}
        indices[key] = extra.get("index") if isinstance(extra, dict) else None
        groups[key] = Problem(problem_id=len(groups), data_source=source, messages=messages, ground_truth=gt, rows=[i])
    problems = list(groups.values())
    ids = [indices[k] for k in groups]
    # extra_info.index names problems when every problem has one and they are distinct; otherwise the
    # problem's ordinal does (mixed files often restart their indices per source).
    if all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in ids) and len(set(ids)) == len(ids):
        for prob, pid in zip(problems, ids):
            prob.problem_id = pid
    return problems


def repeat_count(problems: list[Problem]) -> int:
    """How many times the file repeats a problem (the original's Avg@k layout); 1 for plain files."""
    return max(len(p.rows) for p in problems)
