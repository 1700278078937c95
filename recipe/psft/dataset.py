"""Demonstration dataset: chat prompt + demonstration, loss on the demonstration only.

Rows come in one of two shapes (parquet, JSONL, JSON or CSV; see :mod:`recipe.psft.rows`):

* PSFT's columns: ``prompt`` (a list of chat messages, or a plain string for a single user turn) and
  ``demonstration`` (a string): the demonstration becomes the assistant turn and is the only trained text;
  assistant turns inside the prompt are context.
* verl's ``messages`` column: a whole conversation; every assistant turn is trained.

The loss covers each trained assistant turn's tokens *including* the chat template's end-of-turn token
(``<|im_end|>`` for Qwen), so the model learns to stop the way the template does. How a conversation becomes
tokens and a loss mask is :class:`recipe.psft.rows.ConversationEncoder`, shared with ``prepare_data.py``.

Every row is validated and tokenised when the dataset is built, on the driver, so a bad row or an
over-long row (with ``data.truncation=error``) fails before any Ray worker starts, with the file, row
and key at fault.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from recipe.psft.rows import ConversationEncoder, DataError, columns_of, conversation_of, read_records

__all__ = ["DataError", "DemonstrationDataset", "TRUNCATION_MODES", "WithRowIndex", "truncate"]

# verl's data.truncation policies, applied per row by :func:`truncate`.
TRUNCATION_MODES = ("error", "left", "right")


def _plain(value: Any) -> Any:
    """OmegaConf containers (``data.apply_chat_template_kwargs``) -> plain dicts for the chat template."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return value
    return [_plain(v) for v in value]


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
    layout, collated into nested tensors by ``SFTTensorCollator``). ``paths`` counts rows by how they were
    tokenised (see :class:`recipe.psft.rows.Encoded`) and ``control_string_rows`` the rows whose content
    holds control strings (tokenised as plain text).
    """

    def __init__(self, parquet_files: Any, tokenizer: Any, config: Any, processor: Any = None, max_samples: int = -1):
        config = config or {}
        files = [parquet_files] if isinstance(parquet_files, str | Path) else list(parquet_files)
        self.max_length = int(config.get("max_length", 1024))
        self.truncation = config.get("truncation", "error")
        if self.truncation not in TRUNCATION_MODES:
            raise DataError(f"data.truncation={self.truncation!r}: expected one of {TRUNCATION_MODES}")
        keys = (config.get("prompt_key", "prompt"), config.get("response_key", "demonstration"))
        messages_key = config.get("messages_key", "messages")
        encoder = ConversationEncoder(tokenizer, _plain(config.get("apply_chat_template_kwargs", {}) or {}))

        self.input_ids: list[np.ndarray] = []
        self.loss_masks: list[np.ndarray] = []
        self.paths: Counter[str] = Counter()
        self.control_string_rows = 0
        for path in files:
            records = read_records(path)
            if max_samples is not None and max_samples > 0:
                records = records[: max_samples - len(self.input_ids)]
            columns = columns_of(records)
            for row, record in tqdm(records, desc=f"tokenising {Path(path).name}"):
                conversation = conversation_of(record, str(path), row, *keys, messages_key, columns)
                where = f"{path}: row {row}"
                try:
                    encoded = encoder.encode(conversation.messages, conversation.trained)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from exc
                self.paths[encoded.path] += 1
                self.control_string_rows += encoded.control_strings > 0
                ids, mask = truncate(encoded.input_ids, encoded.loss_mask, self.max_length, self.truncation, where)
                if not any(mask):
                    raise DataError(
                        f"{where}: no demonstration tokens left after data.truncation={self.truncation} "
                        f"to data.max_length={self.max_length}"
                    )
                self.input_ids.append(np.asarray(ids, dtype=np.int32))
                self.loss_masks.append(np.asarray(mask, dtype=np.int8))
        if not self.input_ids:
            raise DataError(f"{files}: no rows")
        print(self.summary(files), flush=True)

    def summary(self, files: list[Any]) -> str:
        """One line: rows, and how many took the separate or plain tokenisation or hold control strings."""
        return (
            f"[data] {len(self.input_ids)} rows from {', '.join(map(str, files))}: "
            f"{self.paths['separate']} tokenised as prompt and demonstration apart (the tokenizer merges text "
            f"across their boundary), {self.paths['plain']} as prompt + demonstration + eos (the template renders "
            f"the whole conversation differently), {self.control_string_rows} with control strings in the text "
            f"(tokenised as plain text)"
        )

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = torch.from_numpy(self.input_ids[index].astype(np.int64))
        return {
            "input_ids": input_ids,
            "position_ids": torch.arange(len(input_ids), dtype=torch.long),
            "loss_mask": torch.from_numpy(self.loss_masks[index].astype(np.int64)),
        }


class WithRowIndex(Dataset):
    """The training dataset with each item's row number (``row_index``), to look up per-row caches."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.dataset[index], "row_index": torch.tensor([index], dtype=torch.long)}
