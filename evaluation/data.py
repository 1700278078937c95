"""Read and validate a test file (parquet or JSONL in the prepare_data.py layout) into problems.

Validation happens here, before any model is loaded, so a bad file fails in a second with the file,
row and key named rather than after minutes of engine start-up.

Files that repeat each problem k times (the original's way to get Avg@k) are grouped by prompt; the
repeat count is kept so that ``--n`` can default to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_COLUMNS = ("prompt", "reward_model")


class DataError(ValueError):
    """A test file that cannot be evaluated; the message names the file, row and key."""


@dataclass
class Problem:
    """One distinct prompt with its reference answer."""

    problem_id: int | str
    data_source: str
    messages: list[dict[str, str]]
    ground_truth: str
    rows: list[int] = field(default_factory=list)  # 0-based rows of the file holding this prompt


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_python(value: Any) -> Any:
    """numpy arrays / pyarrow scalars from parquet into plain lists and dicts."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise DataError(f"{path}: cannot read as parquet: {e}") from e
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {table.column_names}")
        return table.to_pylist()
    if suffix in (".jsonl", ".json"):
        rows = []
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: not valid JSON: {e}") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{lineno}: expected a JSON object per line")
                    rows.append(row)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text: {e}") from e
        if rows:
            missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing} (first row has keys {sorted(rows[0])})")
        return rows
    raise DataError(f"{path}: unsupported extension {suffix!r}; use .parquet or .jsonl")


def _messages(path: Path, i: int, prompt: Any) -> list[dict[str, str]]:
    prompt = _to_python(prompt)
    if isinstance(prompt, str):
        raise DataError(f"{path} row {i}: 'prompt' is a string; expected a list of chat messages {{role, content}}")
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{path} row {i}: 'prompt' must be a non-empty list of chat messages, got {type(prompt)}")
    out = []
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{path} row {i}: prompt[{j}] must have string 'role' and 'content', got {m!r:.200}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _ground_truth(path: Path, i: int, reward_model: Any) -> str:
    reward_model = _to_python(reward_model)
    if not isinstance(reward_model, dict):
        raise DataError(
            f"{path} row {i}: 'reward_model' must be a struct with 'ground_truth', got {reward_model!r:.200}"
        )
    gt = reward_model.get("ground_truth")
    if gt is None or (isinstance(gt, str) and not gt.strip()):
        raise DataError(f"{path} row {i}: 'reward_model.ground_truth' is missing or empty")
    if isinstance(gt, (list, dict)):
        raise DataError(f"{path} row {i}: 'reward_model.ground_truth' must be a string, got {type(gt).__name__}")
    return str(gt)


def load_problems(path: str | Path) -> list[Problem]:
    """Problems in file order, duplicates (same prompt) grouped. Raises :class:`DataError`."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    groups: dict[str, Problem] = {}
    indices: dict[str, Any] = {}
    for i, row in enumerate(rows):
        for col in REQUIRED_COLUMNS:
            if col not in row or row[col] is None:
                raise DataError(f"{path} row {i}: missing '{col}'")
        messages = _messages(path, i, row["prompt"])
        gt = _ground_truth(path, i, row["reward_model"])
        source = row.get("data_source")
        source = str(source) if source not in (None, "") else path.stem
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key in groups:
            prob = groups[key]
            if prob.ground_truth != gt:
                raise DataError(
                    f"{path} rows {prob.rows[0]} and {i}: same prompt, different ground truths "
                    f"({prob.ground_truth!r} vs {gt!r})"
                )
            prob.rows.append(i)
            continue
        extra = _to_python(row.get("extra_info")) or {}
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
