"""Examples on their way to the trainer's rows: validation, de-duplication and the report of dropped rows.

Every source (the Hub, the user's files, reasoning-gym) is first turned into :class:`Example` objects that
still hold the raw values; :func:`validate` then checks them all the same way (with the checks of
:mod:`recipe.psft.rows`, which the trainer and evaluation use too), so one bad row is reported with its file,
row number, key and reason whatever the source, instead of surfacing later as a shape error inside a Ray
worker.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recipe.psft.rows import DataError, RowProblem, as_messages, listing, prompt_problem, text_problem

__all__ = ["DataError", "Example", "Report", "RowProblem", "SourceUnavailable", "SYSTEM_PROMPT"]

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class SourceUnavailable(Exception):
    """A remote source that cannot be reached (no network, Hub offline): exit code 7 (SOURCE_UNAVAILABLE)."""


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
    # (input key, reason) when the conversion already found the row unusable (e.g. a multiple-choice answer
    # key that names no option): reported like any other row problem, so --skip-invalid applies to it.
    invalid: tuple[str, str] | None = None

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


def validate(example: Example, split: str) -> list[RowProblem]:
    """All reasons ``example`` cannot be a ``split`` ("train" or "test") row; empty when it is fine.

    Training rows need a demonstration (the trained tokens); test rows need an answer (the grader's gold).
    """
    problems: list[RowProblem] = []

    def add(name: str, reason: str) -> None:
        problems.append(RowProblem(example.origin, example.row, example.key(name), reason))

    if example.invalid is not None:
        return [RowProblem(example.origin, example.row, *example.invalid)]
    reason = prompt_problem(example.prompt)
    if reason:
        add("prompt", reason)
    if split == "train":
        reason = text_problem(example.demonstration, "demonstration")
        if reason:
            add("demonstration", reason)
    elif example.demonstration is not None and not isinstance(example.demonstration, str):
        add("demonstration", f"demonstration must be a string, got {type(example.demonstration).__name__}")
    answer = clean_answer(example.answer)
    if split == "test" or answer is not None:
        reason = text_problem(answer, "answer")
        if reason:
            add("answer", reason + (" (test rows need one for grading)" if split == "test" else ""))
    return problems


def messages_of(example: Example, system_prompt: str | None) -> list[dict[str, str]]:
    """The validated prompt as chat messages, ``system_prompt`` (when given) replacing any system turn."""
    messages = as_messages(example.prompt)
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
    return messages


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """Duplicate-detection key: the non-system turns, whitespace-normalised (a system prompt does not make a
    problem new)."""
    return "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].split())}" for m in messages if m["role"] != "system")


def to_row(example: Example, messages: list[dict[str, str]], split: str, index: int) -> dict[str, Any]:
    """The trainer's row: columns in :data:`prepare.write.SCHEMA` order, demonstration '' for test rows without
    one."""
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

    skipped: list[RowProblem] = field(default_factory=list)
    duplicates: list[RowProblem] = field(default_factory=list)

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
    problems: list[RowProblem] = []
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


def format_problems(problems: Sequence[RowProblem], title: str, limit: int = 50) -> str:
    hint = "Fix the rows, or pass --skip-invalid to drop them (they are listed in the data card)."
    return f"{listing(title, problems, limit)}\n{hint}"


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
                RowProblem(
                    example.origin, example.row, example.key("prompt"), f"duplicate prompt of {first.origin} {where}"
                )
            )
            continue
        seen[key] = example
        kept.append((example, messages))
    return kept
