"""The user's own files (JSONL, JSON, parquet, CSV) -> :class:`Example` rows.

Each row is read as a plain dict and mapped through the user's key names; either a prompt/response pair or
verl's ``messages`` conversation (the prompt is everything before the last assistant turn, the demonstration
is that turn). Nothing is validated here beyond "can the file be read": :func:`records.validate` does the
checks so every source reports problems the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prepare.records import DataError, Example

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Keys:
    """The input's column names for each field."""

    prompt: str = "prompt"
    response: str = "response"
    answer: str = "answer"
    messages: str = "messages"


def plain(value: Any) -> Any:
    """numpy arrays and scalars (what pandas gives back from parquet) -> plain lists, dicts, str, int, float."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def read_records(path: Path) -> list[tuple[int, Any]]:
    """Read ``path`` into (1-based row number, record) pairs; JSONL row numbers are line numbers.

    A record that is not a JSON object is kept (and rejected later with its row number), so one bad line
    does not hide the others.
    """
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(FORMATS)}")
    try:
        if kind == "jsonl":
            return _read_jsonl(path)
        if kind == "json":
            return _read_json(path)
        import pandas as pd

        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:  # every CSV cell as a string; empty cells stay '' instead of NaN so they are reported as empty
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        return [(i + 1, plain(rec)) for i, rec in enumerate(frame.to_dict("records"))]
    except DataError:
        raise
    except Exception as exc:  # pyarrow / pandas parse errors: name the file and the format
        raise DataError(f"{path}: could not be read as {kind}: {exc}") from exc


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    bad = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                bad.append(f"  {path}: row {number}: invalid JSON: {exc.msg} (column {exc.colno})")
    if bad:
        raise DataError("\n".join([f"{path}: {len(bad)} line(s) are not valid JSON:"] + bad[:50]))
    return rows


def _read_json(path: Path) -> list[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}: one list-valued key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of objects (or an object holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return [(i + 1, rec) for i, rec in enumerate(data)]


def columns_of(records: list[tuple[int, Any]]) -> list[str]:
    """Every key seen in the file, in first-seen order (for 'columns present' messages)."""
    seen: dict[str, None] = {}
    for _, rec in records:
        if isinstance(rec, dict):
            seen.update(dict.fromkeys(rec))
    return list(seen)


def lookup(rec: dict[str, Any], key: str) -> Any:
    """``rec[key]``, or a nested value for a dotted key such as ``reward_model.ground_truth`` (verl's layout)."""
    if key in rec or "." not in key:
        return rec.get(key)
    value: Any = rec
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _present(key: str, columns: list[str]) -> bool:
    return key in columns or ("." in key and key.split(".")[0] in columns)


def resolve_keys(records: list[tuple[int, Any]], keys: Keys) -> Keys:
    """verl-format files (ours included) keep the answer in ``reward_model.ground_truth``: use it when the
    default answer key is absent, so a prepared file can be fed back in without extra flags."""
    columns = columns_of(records)
    if keys.answer == "answer" and "answer" not in columns and "reward_model" in columns:
        return Keys(keys.prompt, keys.response, "reward_model.ground_truth", keys.messages)
    return keys


def check_columns(
    path: Path, records: list[tuple[int, Any]], keys: Keys, need_response: bool, need_answer: bool
) -> None:
    """Fail at once when a needed key is in no row at all: a wrong ``--*-key`` is one error, not N row errors."""
    columns = columns_of(records)
    if not records:
        raise DataError(f"{path}: no rows")
    if keys.messages in columns and keys.prompt not in columns:
        return
    missing = [
        k
        for k, need in ((keys.prompt, True), (keys.response, need_response), (keys.answer, need_answer))
        if need and not _present(k, columns)
    ]
    if missing:
        flag = {keys.prompt: "--prompt-key", keys.response: "--response-key", keys.answer: "--answer-key"}
        hint = ", ".join(f"{flag[k]} {k!r}" for k in missing)
        raise DataError(
            f"{path}: key(s) {missing} not found in any row ({hint}); columns present: {columns}. "
            f"Set the matching --*-key option, or give verl's {keys.messages!r} column."
        )


def to_example(rec: Any, row: int, origin: str, keys: Keys, data_source: str, keep_source: bool = False) -> Example:
    """One input record -> Example (raw values). A non-object record becomes an Example whose prompt is
    flagged by validate()."""
    names = {"prompt": keys.prompt, "demonstration": keys.response, "answer": keys.answer}
    if not isinstance(rec, dict):
        return Example(origin, row, prompt=[], data_source=data_source, keys={"prompt": "<row>"})
    if keep_source and isinstance(rec.get("data_source"), str) and rec["data_source"].strip():
        data_source = rec["data_source"]  # a verl-format input keeps its own labels
    if keys.prompt not in rec and keys.messages in rec:
        prompt, demonstration = split_messages(rec[keys.messages])
        names["prompt"] = names["demonstration"] = keys.messages
        return Example(origin, row, prompt, demonstration, lookup(rec, keys.answer), data_source, keys=names)
    return Example(
        origin, row, rec.get(keys.prompt), rec.get(keys.response), lookup(rec, keys.answer), data_source, keys=names
    )


def split_messages(messages: Any) -> tuple[Any, Any]:
    """verl's conversation -> (prompt messages, last assistant content); malformed input passes through for
    validate() to report."""
    if not isinstance(messages, list) or not messages:
        return messages, None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        return messages[:-1], last.get("content")
    return messages, None


def load_examples(
    path: Path,
    keys: Keys,
    data_source: str | None,
    need_response: bool,
    need_answer: bool,
    max_samples: int | None = None,
) -> list[Example]:
    """Read and map a whole file; ``max_samples`` keeps the first N rows (before validation).

    ``data_source`` labels every row; None keeps each row's own ``data_source`` value, else the file's stem.
    """
    records = read_records(path)
    keys = resolve_keys(records, keys)
    check_columns(path, records, keys, need_response, need_answer)
    if max_samples is not None:
        records = records[:max_samples]
    keep = data_source is None
    source = data_source or path.stem
    return [to_example(rec, row, str(path), keys, source, keep_source=keep) for row, rec in records]
