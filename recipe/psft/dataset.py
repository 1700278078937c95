"""Demonstration dataset: chat prompt + demonstration, loss on the demonstration only.

Rows come in one of two shapes (parquet, or JSONL/JSON for convenience):

* PSFT's columns: ``prompt`` (a list of chat messages, or a plain string for a single user turn) and
  ``demonstration`` (a string): the demonstration becomes the assistant turn.
* verl's ``messages`` column: a whole conversation; every assistant turn is trained.

The loss covers each trained assistant turn's tokens *including* the chat template's end-of-turn token
(``<|im_end|>`` for Qwen), so the model learns to stop the way the template does. Tokens the template
appends after the end-of-turn token (a newline) are never generated and are not trained.

Every row is validated and tokenised when the dataset is built, on the driver, so a bad row or an
over-long row (with ``data.truncation=error``) fails before any Ray worker starts, with the file, row
and key at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

TRUNCATION_MODES = ("error", "left", "right")


class DataError(ValueError):
    """A training file or row that cannot be used, with what is wrong and where."""


def read_rows(path: str | Path) -> pd.DataFrame:
    """Read a parquet / JSONL / JSON file into a DataFrame, failing with the file name."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl")
    except Exception as exc:
        raise DataError(f"{path}: could not be read as {suffix[1:]}: {exc}") from exc
    raise DataError(f"{path}: unsupported file type {suffix!r}; expected .parquet, .jsonl or .json")


def _plain(value: Any) -> Any:
    """numpy arrays / pyarrow structs from parquet -> plain Python lists and dicts."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_messages(messages: Any, where: str, key: str) -> list[dict[str, str]]:
    if isinstance(messages, str):
        if not messages.strip():
            raise DataError(f"{where}: key {key!r} is an empty string")
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: key {key!r} must be a non-empty list of chat messages "
            f"({{'role': ..., 'content': ...}}) or a string, got {type(messages).__name__}: {messages!r:.80}"
        )
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: {key}[{i}] must be a dict with 'role' and 'content', got {message!r:.80}")
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: {key}[{i}]['content'] must be a non-empty string, got {content!r:.80}")
        checked.append({"role": str(message["role"]), "content": content})
    return checked


def row_to_messages(
    row: dict[str, Any], where: str, prompt_key: str, response_key: str, messages_key: str, columns: list[str]
) -> list[dict[str, str]]:
    """One row -> a conversation whose assistant turns are trained. Raises DataError naming the fault."""
    if prompt_key in row or response_key in row:
        for key in (prompt_key, response_key):
            if key not in row:
                raise DataError(f"{where}: missing key {key!r}; columns present: {columns}")
        prompt = _check_messages(_plain(row[prompt_key]), where, prompt_key)
        demonstration = row[response_key]
        if not isinstance(demonstration, str):
            raise DataError(
                f"{where}: key {response_key!r} must be a string, got {type(demonstration).__name__}: "
                f"{demonstration!r:.80}"
            )
        if not demonstration.strip():
            raise DataError(f"{where}: key {response_key!r} is an empty string")
        return prompt + [{"role": "assistant", "content": demonstration}]
    if messages_key in row:
        messages = _check_messages(_plain(row[messages_key]), where, messages_key)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: key {messages_key!r} has no assistant turn to train on")
        return messages
    raise DataError(
        f"{where}: expected columns {prompt_key!r} and {response_key!r} (or verl's {messages_key!r}); "
        f"columns present: {columns}"
    )


class ChatTokenizer:
    """Token ids and the trained spans of a conversation, from the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})
        self.eos_ids = {i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if i}

    def ids(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.kwargs
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
        """Return (input_ids, loss_mask) with the loss on every assistant turn up to its end-of-turn."""
        full = self.ids(messages, add_generation_prompt=False)
        loss_mask = [0] * len(full)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self.ids(messages[:turn], add_generation_prompt=True) if turn else []
            # The last turn ends the conversation: `full` is already its rendering (the common case).
            last = turn == len(messages) - 1
            through = full if last else self.ids(messages[: turn + 1], add_generation_prompt=False)
            if full[: len(through)] != through or through[: len(prefix)] != prefix:
                raise DataError(
                    f"{where}: the chat template does not render the conversation as prompt + assistant turn "
                    f"(turn {turn}); cannot locate the demonstration tokens"
                )
            start, end = len(prefix), len(through)
            span_end = end
            for pos in range(end - 1, start - 1, -1):  # stop after the turn's last end-of-turn token
                if full[pos] in self.eos_ids:
                    span_end = pos + 1
                    break
            for pos in range(start, span_end):
                loss_mask[pos] = 1
        return full, loss_mask


def truncate(
    input_ids: list[int], loss_mask: list[int], max_length: int, mode: str, where: str
) -> tuple[list[int], list[int]]:
    """Apply verl's ``data.truncation`` policy: error, left (keep the end) or right (keep the start)."""
    if len(input_ids) <= max_length:
        return input_ids, loss_mask
    if mode == "error":
        raise DataError(
            f"{where}: {len(input_ids)} tokens exceed data.max_length={max_length} and data.truncation=error; "
            f"raise data.max_length, set data.truncation=left|right, or drop the row"
        )
    if mode == "left":
        return input_ids[-max_length:], loss_mask[-max_length:]
    return input_ids[:max_length], loss_mask[:max_length]


class DemonstrationDataset(Dataset):
    """verl-compatible SFT dataset (``data.custom_cls``) for prompt/demonstration or messages rows.

    Items are ``input_ids``, ``position_ids`` and ``loss_mask`` 1-D tensors (verl's no-padding
    layout, collated into nested tensors by ``SFTTensorCollator``).
    """

    def __init__(self, parquet_files: Any, tokenizer: Any, config: Any, processor: Any = None, max_samples: int = -1):
        config = config or {}
        files = [parquet_files] if isinstance(parquet_files, str | Path) else list(parquet_files)
        self.max_length = int(config.get("max_length", 1024))
        self.truncation = config.get("truncation", "error")
        if self.truncation not in TRUNCATION_MODES:
            raise DataError(f"data.truncation={self.truncation!r}: expected one of {TRUNCATION_MODES}")
        prompt_key = config.get("prompt_key", "prompt")
        response_key = config.get("response_key", "demonstration")
        messages_key = config.get("messages_key", "messages")
        chat = ChatTokenizer(tokenizer, _plain(dict(config.get("apply_chat_template_kwargs", {}) or {})))

        self.input_ids: list[np.ndarray] = []
        self.loss_masks: list[np.ndarray] = []
        for path in files:
            frame = read_rows(path)
            if max_samples is not None and max_samples > 0:
                frame = frame.iloc[: max_samples - len(self.input_ids)]
            columns = list(frame.columns)
            for index, row in enumerate(tqdm(frame.to_dict("records"), desc=f"tokenising {Path(path).name}")):
                where = f"{path}, row {index}"
                messages = row_to_messages(row, where, prompt_key, response_key, messages_key, columns)
                ids, mask = chat.encode(messages, where)
                ids, mask = truncate(ids, mask, self.max_length, self.truncation, where)
                if not any(mask):
                    raise DataError(
                        f"{where}: no demonstration tokens left after data.truncation={self.truncation} "
                        f"to data.max_length={self.max_length}"
                    )
                self.input_ids.append(np.asarray(ids, dtype=np.int32))
                self.loss_masks.append(np.asarray(mask, dtype=np.int8))
        if not self.input_ids:
            raise DataError(f"{files}: no rows")

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = torch.from_numpy(self.input_ids[index].astype(np.int64))
        return {
            "input_ids": input_ids,
            "position_ids": torch.arange(len(input_ids), dtype=torch.long),
            "loss_mask": torch.from_numpy(self.loss_masks[index].astype(np.int64)),
        }
