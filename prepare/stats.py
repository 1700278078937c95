"""Token-length statistics, computed the way the trainer tokenises.

Each row goes through :func:`recipe.psft.rows.conversation_of` and :class:`recipe.psft.rows.ConversationEncoder`
with the same ``apply_chat_template_kwargs`` (``--chat-template-kwargs``), so the numbers are the trainer's. A
row longer than ``--max-length`` is one the trainer truncates (``data.truncation=left|right``) or rejects
(``data.truncation=error``, the default); a prompt that alone fills ``--max-length`` leaves no demonstration
tokens to train on, whatever the truncation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe.psft import rows as row_format
from recipe.psft.rows import ConversationEncoder, DataError, conversation_of


def load_tokenizer(path: str) -> Any:
    """A tokenizer from a local model folder (no network: a Hub id is refused rather than downloaded)."""
    if not Path(path).exists():
        raise DataError(f"--tokenizer {path}: no such directory (give a local model or tokenizer folder)")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise DataError(f"--tokenizer {path}: could not load a tokenizer: {exc}") from exc


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (an actual row's length, no interpolation)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def _summary(values: list[int]) -> dict[str, int]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=0)}


def token_stats(encoder: ConversationEncoder, name: str, rows: list[dict[str, Any]], max_length: int | None) -> dict:
    """p50/p95/max of prompt, demonstration (trained) and total tokens, how many rows exceed ``max_length``,
    and how many the trainer tokenises with prompt and demonstration apart (see ``Encoded.path``)."""
    prompt_lens, demo_lens, total_lens = [], [], []
    paths = {"separate": 0, "plain": 0}
    columns = list(row_format.COLUMNS)
    for index, row in enumerate(rows, start=1):
        if not row[row_format.DEMONSTRATION]:  # a test row: only the prompt is ever tokenised
            prompt_lens.append(len(encoder.encode_prompt(row_format.as_messages(row[row_format.PROMPT]))))
            continue
        conversation = conversation_of(
            row, name, index, row_format.PROMPT, row_format.DEMONSTRATION, row_format.MESSAGES, columns
        )
        try:
            encoded = encoder.encode(conversation.messages, conversation.trained)
        except DataError as exc:
            raise DataError(f"{name}: row {index}: {exc}") from exc
        paths[encoded.path] = paths.get(encoded.path, 0) + 1
        prompt_lens.append(next((i for i, m in enumerate(encoded.loss_mask) if m), len(encoded.loss_mask)))
        demo_lens.append(sum(encoded.loss_mask))
        total_lens.append(len(encoded.input_ids))
    stats: dict[str, Any] = {"rows": len(rows), "prompt_tokens": _summary(prompt_lens)}
    if total_lens:
        stats["demonstration_tokens"] = _summary(demo_lens)
        stats["total_tokens"] = _summary(total_lens)
        stats["tokenised_apart"] = paths["separate"]
        stats["template_fallback"] = paths["plain"]
    if max_length is not None:
        stats["max_length"] = max_length
        stats["over_max_length"] = sum(n > max_length for n in (total_lens or prompt_lens))
        stats["prompt_fills_max_length"] = sum(n >= max_length for n in prompt_lens)
    return stats


def describe(name: str, stats: dict[str, Any]) -> str:
    parts = [f"{name}: {stats['rows']} rows"]
    for key in ("prompt_tokens", "demonstration_tokens", "total_tokens"):
        if key in stats:
            s = stats[key]
            parts.append(f"{key.replace('_tokens', '')} tokens p50={s['p50']} p95={s['p95']} max={s['max']}")
    if "tokenised_apart" in stats:
        parts.append(
            f"{stats['tokenised_apart']} row(s) tokenised as prompt and demonstration apart (the tokenizer merges "
            f"text across their boundary), {stats['template_fallback']} as prompt + demonstration + eos (the chat "
            f"template renders the whole conversation differently)"
        )
    if "max_length" in stats:
        parts.append(
            f"{stats['over_max_length']} row(s) over --max-length {stats['max_length']} (the trainer truncates them, "
            f"or rejects them with data.truncation=error); {stats['prompt_fills_max_length']} prompt(s) alone fill it"
        )
    return "; ".join(parts)
