"""The one definition of a data row, shared by ``prepare/``, the trainer's dataset and ``evaluation/``.

* Column names of the trainer's files, and the one error type, :class:`DataError`.
* :func:`read_records`: parquet, JSONL, JSON and CSV files as plain Python values. Text stays text: nothing
  infers types (pandas' ``read_json`` would turn a column of digit strings into integers), and invalid UTF-8
  or a lone surrogate is an error naming the file, row and key.
* The checks of a prompt, a conversation and a text field, returning the reason a value is unusable.
* :class:`ConversationEncoder`: the one way a conversation becomes token ids and a loss mask, used by the
  trainer and by ``prepare_data.py --tokenizer`` statistics with the same chat-template arguments.

Rows are numbered from 1 everywhere: the line number in a JSONL file, the position in other files.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The trainer's columns, as prepare_data.py writes them.
DATA_SOURCE = "data_source"
PROMPT = "prompt"
DEMONSTRATION = "demonstration"
ABILITY = "ability"
REWARD_MODEL = "reward_model"
EXTRA_INFO = "extra_info"
GROUND_TRUTH = f"{REWARD_MODEL}.ground_truth"
MESSAGES = "messages"  # verl's multi-turn column: a whole conversation, every assistant turn trained
COLUMNS = (DATA_SOURCE, PROMPT, DEMONSTRATION, ABILITY, REWARD_MODEL, EXTRA_INFO)
ROLES = ("system", "user", "assistant")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SHOWN = 50  # problems listed in one error message

Record = tuple[int, Any]  # (row number, the row as read)


class DataError(ValueError):
    """Input the user must fix (a file, a row, a key, an option); the message says where and what."""


@dataclass(frozen=True)
class RowProblem:
    """One reason one row cannot be used; ``origin`` names the file or source, ``row`` counts from 1."""

    origin: str
    row: int
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: row {self.row}: {self.key!r}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "row": self.row, "key": self.key, "reason": self.reason}


def row_error(origin: str, row: int, key: str, reason: str) -> DataError:
    return DataError(str(RowProblem(origin, row, key, reason)))


def listing(title: str, lines: Sequence[object], limit: int = SHOWN) -> str:
    """``title:`` then one indented line per item, at most ``limit`` of them."""
    shown = [f"{title}:"] + [f"  {line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return "\n".join(shown)


# ----------------------------------------------------------------------------------------------- reading


def read_records(path: str | Path) -> list[Record]:
    """Every row of a .jsonl/.ndjson, .json, .parquet or .csv file as (row number, plain Python value).

    A row that is not an object is kept (the caller rejects it with its row number), so one bad row does
    not hide the others. Raises DataError for a missing, unreadable or badly encoded file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(FORMATS)}")
    try:
        records = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](path)
    except DataError:
        raise
    except Exception as exc:  # pyarrow and csv raise many types for a damaged file: name the file and format
        raise DataError(f"{path}: cannot read as {kind}: {exc}") from exc
    _check_encoding(path, records)
    return records


def _text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 become lone surrogates, which _check_encoding reports
    with their row and key (a plain decode error would only give a byte offset)."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _read_jsonl(path: Path) -> list[Record]:
    records, bad = [], []
    for number, line in enumerate(_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            bad.append(f"{path}: row {number}: invalid JSON: {exc.msg} (column {exc.colno})")
    if bad:
        raise DataError(listing(f"{path}: {len(bad)} line(s) are not valid JSON", bad))
    return records


def _read_json(path: Path) -> list[Record]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}: one list-valued key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of objects (or an object holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return list(enumerate(data, start=1))


def _read_csv(path: Path) -> list[Record]:
    """Every cell as a string; an empty cell stays '' so it is reported as empty rather than missing."""
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    return list(enumerate(reader, start=1))


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    return list(enumerate(pq.read_table(path).to_pylist(), start=1))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_text(value: Any, key: str) -> list[tuple[str, str]]:
    """(key, reason) for every string inside ``value`` holding invalid UTF-8 or a lone surrogate."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found is None:
            return []
        char = found.group()
        what = f"byte {ord(char) - 0xDC00:#04x} is not UTF-8" if 0xDC80 <= ord(char) <= 0xDCFF else "lone surrogate"
        return [(key, f"{what} ({char!a}) at character {found.start()}: re-encode the file as UTF-8")]
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _bad_text(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in _bad_text(v, f"{key}[{i}]")]
    return []


def _check_encoding(path: Path, records: list[Record]) -> None:
    bad = [RowProblem(str(path), number, key, reason) for number, rec in records for key, reason in _bad_text(rec, "")]
    if bad:
        raise DataError(listing(f"{path}: {len(bad)} text value(s) are not valid UTF-8", bad))


def columns_of(records: list[Record]) -> list[str]:
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


# ------------------------------------------------------------------------------------------------ checks


def text_problem(value: Any, what: str) -> str | None:
    """Why ``value`` is not a usable non-empty string (None when it is)."""
    if value is None:
        return f"{what} is missing"
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}: {value!r:.60}"
    if not value.strip():
        return f"{what} is an empty string"
    return None


def _turns_problem(messages: Any, expected: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"{expected}, got {type(messages).__name__}: {messages!r:.60}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"message {i} must be a dict with 'role' and 'content', got {message!r:.60}"
        if message["role"] not in ROLES:
            return f"message {i} has role {message['role']!r}; expected one of {ROLES}"
        reason = text_problem(message["content"], f"message {i} content")
        if reason:
            return reason
    if any(m["role"] == "system" for m in messages[1:]):
        return "a system message may only come first"
    return None


def prompt_problem(prompt: Any) -> str | None:
    """Why a prompt (a string: one user turn, or chat messages ending with the user's) is unusable."""
    if isinstance(prompt, str) or prompt is None:
        return text_problem(prompt, "prompt")
    reason = _turns_problem(prompt, "prompt must be a string or a non-empty list of chat messages")
    if reason is None and prompt[-1]["role"] != "user":
        reason = f"the last prompt message must be the user's, got role {prompt[-1]['role']!r}"
    return reason


def conversation_problem(messages: Any) -> str | None:
    """Why a verl ``messages`` conversation (system?, user, assistant, ...) cannot be trained on."""
    reason = _turns_problem(messages, "messages must be a non-empty list of chat messages")
    if reason is None and not any(m["role"] == "assistant" for m in messages):
        reason = "no assistant turn to train on"
    if reason is None and next(m for m in messages if m["role"] != "system")["role"] != "user":
        reason = "the first turn after the system message must be the user's"
    return reason


def as_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, str]]:
    """A checked prompt or conversation as plain {role, content} dicts (a string is one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


@dataclass(frozen=True)
class Conversation:
    """A row ready to encode: the messages and the indices of the assistant turns the loss covers."""

    messages: list[dict[str, str]]
    trained: tuple[int, ...]


def conversation_of(
    record: Any, origin: str, row: int, prompt_key: str, response_key: str, messages_key: str, columns: list[str]
) -> Conversation:
    """A training row -> Conversation, or DataError naming the file, row and key at fault.

    Prompt + demonstration rows train the demonstration only (assistant turns in the prompt are context);
    verl ``messages`` rows train every assistant turn, as verl's multi-turn dataset does.
    """
    if not isinstance(record, dict):
        raise row_error(origin, row, "<row>", f"expected an object with columns, got {type(record).__name__}")
    if prompt_key in record or response_key in record:
        for key in (prompt_key, response_key):
            if key not in record:
                raise row_error(origin, row, key, f"column missing; columns present: {columns}")
        reason = prompt_problem(record[prompt_key])
        if reason:
            raise row_error(origin, row, prompt_key, reason)
        reason = text_problem(record[response_key], "demonstration")
        if reason:
            raise row_error(origin, row, response_key, reason)
        messages = as_messages(record[prompt_key]) + [{"role": "assistant", "content": record[response_key]}]
        return Conversation(messages, (len(messages) - 1,))
    if messages_key in record:
        reason = conversation_problem(record[messages_key])
        if reason:
            raise row_error(origin, row, messages_key, reason)
        messages = as_messages(record[messages_key])
        return Conversation(messages, tuple(i for i, m in enumerate(messages) if m["role"] == "assistant"))
    raise row_error(
        origin,
        row,
        prompt_key,
        f"expected columns {prompt_key!r} and {response_key!r} (or verl's {messages_key!r}); "
        f"columns present: {columns}",
    )


# ---------------------------------------------------------------------------------------------- encoding

# Private-use code points that stand in for control strings found in content while the template renders.
_SENTINEL_BASE = 0xF0000


def control_strings(tokenizer: Any) -> list[str]:
    """The text of every special token (``<|im_end|>``, ``<|endoftext|>``, ...), longest first.

    Ordinary added tokens (Qwen3's ``<think>``) are not control strings: content is meant to produce them.
    """
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.add(str(token))
    return sorted((s for s in found if s), key=lambda s: (-len(s), s))


@dataclass
class Encoded:
    """Token ids and loss mask of one conversation.

    ``path`` says how the trained turns were tokenised: "joint" (the whole rendered conversation, the common
    case), "separate" (each trained turn apart from the text before it, because the tokenizer merges text
    across the boundary) or "plain" (the template renders the conversation so that it does not start with
    the prompt as rendered for generation: prompt + demonstration + eos, as the original PSFT did).
    ``control_strings`` counts control strings in the content, tokenised as plain text.
    """

    input_ids: list[int]
    loss_mask: list[int]
    path: str
    control_strings: int


class ConversationEncoder:
    """Conversation -> (input_ids, loss_mask) through the tokenizer's chat template.

    Each trained assistant turn is the text the template renders after the generation prompt of the turns
    before it, up to and including its end-of-turn token (``<|im_end|>``); text the template appends after
    that (a newline) stays in the input untrained, as it is never generated. The prompt and each trained
    turn are tokenised apart, exactly as the model meets them when it generates (the prompt tokenised alone,
    then its own tokens). For most rows that equals tokenising the whole conversation at once; where it does
    not (Qwen's BPE merges ``"assistant\\n"`` + a demonstration starting with ``"\\n"`` into ``"\\n\\n"``), the
    row is still trained, and its ``path`` is "separate" so callers can count it.

    Control strings in content (a demonstration quoting ``<|im_end|>``) are tokenised as plain text, never as
    the control token: as a token, a quoted ``<|im_end|>`` would end the turn in the middle of the
    demonstration and teach the model to stop there, and a user turn could forge a turn of another role.
    While the template renders, each such string is replaced by a private-use character and put back,
    split into ordinary tokens, after rendering.
    """

    def __init__(self, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})
        self.controls = control_strings(tokenizer)
        self._control = re.compile("|".join(map(re.escape, self.controls))) if self.controls else None
        self._index = {s: i for i, s in enumerate(self.controls)}
        last = chr(_SENTINEL_BASE + max(len(self.controls) - 1, 0))
        self._sentinel = re.compile(f"[{chr(_SENTINEL_BASE)}-{last}]")

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, **self.kwargs
            )
        except Exception as exc:  # jinja's errors, including the template's own raise_exception(...)
            raise DataError(f"the chat template cannot render this conversation: {exc}") from exc

    def tokens(self, text: str) -> list[int]:
        """Token ids of rendered text; stand-ins for control strings from content become plain-text pieces."""
        ids: list[int] = []
        start = 0
        for found in self._sentinel.finditer(text) if self.controls else ():
            if found.start() > start:
                ids += self.tokenizer(text[start : found.start()], add_special_tokens=False)["input_ids"]
            control = self.controls[ord(found.group()) - _SENTINEL_BASE]
            ids += self.tokenizer(control, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            start = found.end()
        if start < len(text):
            ids += self.tokenizer(text[start:], add_special_tokens=False)["input_ids"]
        return ids

    def protect(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
        """``messages`` with each control string in a content replaced by its stand-in, and how many there were."""
        if self._control is None:
            return messages, 0
        total = 0
        protected = []

        def stand_in(found: re.Match[str]) -> str:
            return chr(_SENTINEL_BASE + self._index[found.group()])

        for message in messages:
            content, count = self._control.subn(stand_in, message["content"])
            total += count
            protected.append({**message, "content": content})
        return protected, total

    def count_controls(self, text: str) -> list[str]:
        """The control strings ``text`` contains (for reports)."""
        return self._control.findall(text) if self._control is not None else []

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a prompt followed by the generation prompt (what generation starts from)."""
        return self.tokens(self.render(self.protect(messages)[0], generation_prompt=True))

    def encode(self, messages: list[dict[str, str]], trained: Sequence[int]) -> Encoded:
        """Tokens and loss mask of ``messages`` with the loss on the assistant turns at indices ``trained``."""
        protected, controls = self.protect(messages)
        full = self.render(protected, generation_prompt=False)
        segments: list[tuple[str, int]] = []  # (text, trained?) in order; their concatenation is `full`
        done = 0
        for turn in trained:
            prompt = self.render(protected[:turn], generation_prompt=True)
            if not full.startswith(prompt) or len(prompt) < done:
                if len(trained) == 1:
                    return self._plain(protected, turn, prompt, full, controls)
                raise DataError(
                    f"the chat template renders the conversation before assistant turn {turn} differently when "
                    "later turns follow, so that turn cannot be located; give the row as prompt + demonstration"
                )
            end = self._turn_end(protected, turn, prompt, full)
            segments += [(full[done : len(prompt)], 0), (full[len(prompt) : end], 1)]
            done = end
        segments.append((full[done:], 0))
        input_ids: list[int] = []
        loss_mask: list[int] = []
        for text, train in segments:
            ids = self.tokens(text) if text else []
            input_ids += ids
            loss_mask += [train] * len(ids)
        path = "joint" if input_ids == self.tokens(full) else "separate"
        return Encoded(input_ids, loss_mask, path, controls)

    def _turn_end(self, protected: list[dict[str, str]], turn: int, prompt: str, full: str) -> int:
        """Where in ``full`` the trained text of assistant turn ``turn`` ends (after its end-of-turn token)."""
        through = full if turn == len(protected) - 1 else self.render(protected[: turn + 1], generation_prompt=False)
        if full.startswith(through) and len(through) > len(prompt):
            # The turn as rendered when it is the last: train through its last control token when only
            # whitespace follows (ChatML's "<|im_end|>\n", Llama's "<|eot_id|>"), else all of it.
            region = through[len(prompt) :]
            found = list(self._control.finditer(region)) if self._control is not None else []
            last = found[-1] if found else None
            if last is not None and not region[last.end() :].strip():
                return len(prompt) + last.end()
            return len(through)
        # Later turns change how the template renders this one (Qwen3 drops the <think> block of turns before
        # the last user message): train it as it stands in the whole conversation, through its first control token.
        first = self._control.search(full, len(prompt)) if self._control is not None else None
        if first is None:
            raise DataError(f"assistant turn {turn} has no end-of-turn token in the rendered conversation")
        return first.end()

    def _plain(self, protected: list[dict[str, str]], turn: int, prompt: str, full: str, controls: int) -> Encoded:
        """The prompt rendered for generation, then the turn's content and eos, tokenised apart (the original
        PSFT's way), for templates whose whole conversation does not start with that prompt (DeepSeek-R1's
        generation prompt ends in "<think>\\n", which its rendering of an answer leaves out)."""
        shared = 0
        while shared < min(len(prompt), len(full)) and prompt[shared] == full[shared]:
            shared += 1
        content = protected[turn]["content"]
        opening = prompt[shared:]  # what the generation prompt adds: drop it where the content repeats it
        if opening and content.startswith(opening):
            content = content[len(opening) :]
        prompt_ids = self.tokens(prompt)
        turn_ids = self.tokens(content + (self.tokenizer.eos_token or ""))
        return Encoded(prompt_ids + turn_ids, [0] * len(prompt_ids) + [1] * len(turn_ids), "plain", controls)


def encode_conversation(
    tokenizer: Any,
    messages: list[dict[str, str]],
    trained: Sequence[int],
    chat_template_kwargs: dict[str, Any] | None = None,
) -> Encoded:
    """One-off :meth:`ConversationEncoder.encode` (build a ConversationEncoder to encode many rows)."""
    return ConversationEncoder(tokenizer, chat_template_kwargs).encode(messages, trained)
