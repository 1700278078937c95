"""The user's own files (JSONL, JSON, parquet, CSV) -> :class:`Example` rows.

Each row is read by :func:`recipe.psft.rows.read_records` (text stays text) and mapped through the user's
key names; either a prompt/response pair or verl's ``messages`` conversation (the prompt is everything before
the last assistant turn, the demonstration is that turn; earlier assistant turns become context). Nothing is
validated here beyond "can the file be read": :func:`records.validate` does the checks so every source
reports problems the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prepare.records import Example
from recipe.psft.rows import GROUND_TRUTH, REWARD_MODEL, DataError, Record, columns_of, lookup, read_records


@dataclass(frozen=True)
class Keys:
    """The input's column names for each field."""

    prompt: str = "prompt"
    response: str = "response"
    answer: str = "answer"
    messages: str = "messages"


def _present(key: str, columns: list[str]) -> bool:
    return key in columns or ("." in key and key.split(".")[0] in columns)


def resolve_keys(records: list[Record], keys: Keys) -> Keys:
    """verl-format files (ours included) keep the answer in ``reward_model.ground_truth``: use it when the
    default answer key is absent, so a prepared file can be fed back in without extra flags."""
    columns = columns_of(records)
    if keys.answer == "answer" and "answer" not in columns and REWARD_MODEL in columns:
        return Keys(keys.prompt, keys.response, GROUND_TRUTH, keys.messages)
    return keys


def check_columns(path: Path, records: list[Record], keys: Keys, need_response: bool, need_answer: bool) -> None:
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
