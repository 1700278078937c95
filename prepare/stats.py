"""Token-length statistics against the tokenizer the trainer will use.

Lengths are measured the way the trainer's dataset builds a row: the chat template applied to the prompt
plus the demonstration as the assistant turn. A row longer than ``--max-length`` is one the trainer
truncates (``data.truncation=left|right``) or rejects (``data.truncation=error``, the default); a prompt that
alone fills ``--max-length`` leaves no demonstration tokens to train on, whatever the truncation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prepare.records import DataError


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


def _ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def token_stats(tokenizer: Any, rows: list[dict[str, Any]], max_length: int | None) -> dict[str, Any]:
    """p50/p95/max of prompt, demonstration and total tokens, and how many rows exceed ``max_length``."""
    prompt_lens, demo_lens, total_lens = [], [], []
    for row in rows:
        prompt = [dict(m) for m in row["prompt"]]
        prompt_len = len(_ids(tokenizer, prompt, add_generation_prompt=True))
        prompt_lens.append(prompt_len)
        if row["demonstration"]:
            total = len(_ids(tokenizer, prompt + [{"role": "assistant", "content": row["demonstration"]}], False))
            total_lens.append(total)
            demo_lens.append(total - prompt_len)
    stats: dict[str, Any] = {"rows": len(rows), "prompt_tokens": _summary(prompt_lens)}
    if total_lens:
        stats["demonstration_tokens"] = _summary(demo_lens)
        stats["total_tokens"] = _summary(total_lens)
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
    if "max_length" in stats:
        parts.append(
            f"{stats['over_max_length']} row(s) over --max-length {stats['max_length']} (the trainer truncates them, "
            f"or rejects them with data.truncation=error); {stats['prompt_fills_max_length']} prompt(s) alone fill it"
        )
    return "; ".join(parts)
