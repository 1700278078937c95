"""The trainer's row format, row validation, de-duplication and deterministic parquet writing.

Every source (the Hub, the user's files, reasoning-gym) is first turned into :class:`Example` objects that
still hold the raw values; :func:`validate` then checks them all the same way, so one bad row is reported
with its file, row number, key and reason whatever the source, instead of surfacing later as a shape error
inside a Ray worker.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
ROLES = ("system", "user", "assistant")

# One fixed schema for every file: pyarrow would otherwise infer types row by row, and an all-empty
# column (or a different dict order) would change the bytes written.
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE_TYPE)),
        ("demonstration", pa.string()),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("source_row", pa.int64())])),
    ]
)


class DataError(Exception):
    """Input the user must fix (bad rows, a missing file or key, bad options): exit code 2."""


class SourceUnavailable(Exception):
    """A remote source that cannot be reached (no network, Hub offline): exit code 3."""


@dataclass(frozen=True)
class Problem:
    """One reason one row cannot be used; ``origin`` names the file or source, ``row`` is 1-based."""

    origin: str
    row: int
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: row {self.row}: {self.key!r}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "row": self.row, "key": self.key, "reason": self.reason}


@dataclass
class Example:
    """A row on its way to the trainer's format. Fields hold raw values until :func:`validate` passes.

    ``prompt`` is a string (one user turn) or a list of chat messages; ``keys`` maps each field to the
    input key it came from, so problems are reported in the user's own column names.
    """

    origin: str
    row: int
    prompt: Any
    demonstration: Any = None
    answer: Any = None
    data_source: str = "local"
    ability: str = "math"
    keys: dict[str, str] = field(
        default_factory=lambda: {"prompt": "prompt", "demonstration": "demonstration", "answer": "answer"}
    )

    def key(self, name: str) -> str:
        return self.keys.get(name, name)


def clean_answer(value: Any) -> Any:
    """Numbers and one-element lists become the answer string; other non-strings are left for validate().

    Hub sets store answers as float (AMC: ``142.0``) or as a one-element list; the grader compares strings.
    """
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip()
    return value


def _check_text(value: Any, what: str) -> str | None:
    """Return the reason ``value`` is not a usable non-empty string, or None when it is."""
    if value is None:
        return f"{what} is missing"
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}: {value!r:.60}"
    if not value.strip():
        return f"{what} is an empty string"
    return None


def _check_messages(messages: Any) -> str | None:
    """Why a prompt given as chat messages is unusable (None when fine): roles, string contents, a user turn."""
    if not isinstance(messages, list) or not messages:
        got = f"{type(messages).__name__}: {messages!r:.60}"
        return f"prompt must be a string or a non-empty list of chat messages, got {got}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"message {i} must be a dict with 'role' and 'content', got {message!r:.60}"
        if message["role"] not in ROLES:
            return f"message {i} has role {message['role']!r}; expected one of {ROLES}"
        reason = _check_text(message["content"], f"message {i} content")
        if reason:
            return reason
    if messages[-1]["role"] != "user":
        return f"the last prompt message must be the user's, got role {messages[-1]['role']!r}"
    if any(m["role"] == "system" for m in messages[1:]):
        return "a system message may only come first"
    return None


def validate(example: Example, split: str) -> list[Problem]:
    """All reasons ``example`` cannot be a ``split`` ("train" or "test") row; empty when it is fine.

    Training rows need a demonstration (the trained tokens); test rows need an answer (the grader's gold).
    """
    problems: list[Problem] = []

    def add(name: str, reason: str) -> None:
        problems.append(Problem(example.origin, example.row, example.key(name), reason))

    if isinstance(example.prompt, str):
        reason = _check_text(example.prompt, "prompt")
    elif example.prompt is None:
        reason = "prompt is missing"
    else:
        reason = _check_messages(example.prompt)
    if reason:
        add("prompt", reason)
    if split == "train":
        reason = _check_text(example.demonstration, "demonstration")
        if reason:
            add("demonstration", reason)
    elif example.demonstration is not None and not isinstance(example.demonstration, str):
        add("demonstration", f"demonstration must be a string, got {type(example.demonstration).__name__}")
    answer = clean_answer(example.answer)
    if split == "test" or answer is not None:
        reason = _check_text(answer, "answer")
        if reason:
            add("answer", reason + (" (test rows need one for grading)" if split == "test" else ""))
    return problems


def messages_of(example: Example, system_prompt: str | None) -> list[dict[str, str]]:
    """The validated prompt as chat messages, ``system_prompt`` (when given) replacing any system turn."""
    if isinstance(example.prompt, str):
        messages = [{"role": "user", "content": example.prompt}]
    else:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in example.prompt]
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
    return messages


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """Duplicate-detection key: the non-system turns, whitespace-normalised (a system prompt does not make a
    problem new)."""
    return "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].split())}" for m in messages if m["role"] != "system")


def to_row(example: Example, messages: list[dict[str, str]], split: str, index: int) -> dict[str, Any]:
    """The trainer's row: columns in :data:`SCHEMA` order, demonstration '' for test rows without one."""
    answer = clean_answer(example.answer)
    return {
        "data_source": example.data_source,
        "prompt": messages,
        "demonstration": example.demonstration if isinstance(example.demonstration, str) else "",
        "ability": example.ability,
        "reward_model": {"ground_truth": answer if isinstance(answer, str) else "", "style": "rule"},
        "extra_info": {"split": split, "index": index, "source_row": example.row},
    }


@dataclass
class Report:
    """What was dropped and why, collected across the whole run for the console and the data card."""

    skipped: list[Problem] = field(default_factory=list)
    duplicates: list[Problem] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        by_reason = Counter(_reason_class(p.reason) for p in self.skipped)
        return {
            "skipped_count": len(self.skipped),
            "skipped_by_reason": dict(sorted(by_reason.items())),
            "skipped": [p.as_dict() for p in self.skipped[:200]],
            "duplicates_count": len(self.duplicates),
            "duplicates": [p.as_dict() for p in self.duplicates[:200]],
        }


def _reason_class(reason: str) -> str:
    """Group reasons for the summary: drop the row-specific tail after ':' or '(' ."""
    for sep in (":", " (", ", got"):
        reason = reason.split(sep)[0]
    return reason.strip()


def check_all(examples: Iterable[Example], split: str, skip_invalid: bool, report: Report) -> list[Example]:
    """Validate every example; raise DataError listing all problems, or drop the bad rows with --skip-invalid."""
    good: list[Example] = []
    problems: list[Problem] = []
    for example in examples:
        found = validate(example, split)
        if found:
            problems.extend(found)
        else:
            good.append(example)
    if problems and not skip_invalid:
        raise DataError(format_problems(problems, f"{len(problems)} invalid {split} row problem(s)"))
    report.skipped.extend(problems)
    return good


def format_problems(problems: Sequence[Problem], title: str, limit: int = 50) -> str:
    lines = [f"{title}:"] + [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    lines.append("Fix the rows, or pass --skip-invalid to drop them (they are listed in the data card).")
    return "\n".join(lines)


def dedupe(
    pairs: list[tuple[Example, list[dict[str, str]]]],
    report: Report,
    seen: dict[str, Example] | None = None,
    against: str = "",
) -> list[tuple[Example, list[dict[str, str]]]]:
    """Drop rows whose prompt repeats an earlier row (or one in ``seen``, e.g. the training set), reporting
    each with the row it repeats. The first occurrence wins, so the result does not depend on anything but
    the input order."""
    seen = dict(seen or {})
    kept = []
    for example, messages in pairs:
        key = prompt_key(messages)
        first = seen.get(key)
        if first is not None:
            where = f"{against} row {first.row}" if against else f"row {first.row}"
            report.duplicates.append(
                Problem(
                    example.origin, example.row, example.key("prompt"), f"duplicate prompt of {first.origin} {where}"
                )
            )
            continue
        seen[key] = example
        kept.append((example, messages))
    return kept


def write_parquet(rows: list[dict[str, Any]], path: Path) -> str:
    """Write rows with the fixed schema and return the file's sha256.

    No timestamps or pandas metadata go in, and the file is written in one row group, so the same rows give
    byte-identical files. Written to a temporary name first so a crash never leaves a half file behind.
    """
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, len(rows)), write_statistics=False)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_hash(files: dict[str, list[dict[str, Any]]]) -> str:
    """sha256 of the rows themselves (canonical JSON), stable across pyarrow versions unlike the file bytes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        for row in files[name]:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()
