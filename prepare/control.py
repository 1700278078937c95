"""Rows whose text holds a tokenizer's control strings (``<|im_end|>``, ``<|endoftext|>``, ...).

The trainer tokenises such text as plain characters, never as the control token (see
:class:`recipe.psft.rows.ConversationEncoder`), but a quoted ``<|im_end|>`` is still worth a look: it is
often a scraping or templating accident. With ``--tokenizer`` the model's own special tokens are looked for;
without, the common shapes of chat control strings.
"""

from __future__ import annotations

import re
from typing import Any

from recipe.psft import rows as row_format
from recipe.psft.rows import ConversationEncoder

# ChatML / Llama-3 style <|...|>, DeepSeek's full-width <｜...｜>, Gemma's turn markers.
COMMON_CONTROL = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜\s]{1,40}｜>|<(?:start|end)_of_turn>")
LISTED = 200


def find_control_strings(out: dict[str, list[dict[str, Any]]], encoder: ConversationEncoder | None) -> dict:
    """The count and list (file, index, source row, keys, strings) of rows holding control strings."""
    find = encoder.count_controls if encoder is not None else COMMON_CONTROL.findall
    found_rows = []
    for name, rows in out.items():
        for index, row in enumerate(rows):
            texts = [(row_format.PROMPT, m["content"]) for m in row[row_format.PROMPT]]
            texts.append((row_format.DEMONSTRATION, row[row_format.DEMONSTRATION]))
            hits = {key: sorted(set(find(text))) for key, text in texts if text}
            hits = {key: strings for key, strings in hits.items() if strings}
            if hits:
                found_rows.append(
                    {
                        "file": f"{name}.parquet",
                        "index": index,
                        "source_row": row[row_format.EXTRA_INFO]["source_row"],
                        "strings": {key: strings for key, strings in sorted(hits.items())},
                    }
                )
    checked = "the tokenizer's special tokens" if encoder is not None else f"common patterns {COMMON_CONTROL.pattern}"
    return {"checked_against": checked, "rows_count": len(found_rows), "rows": found_rows[:LISTED]}


def describe(report: dict[str, Any]) -> str:
    first = report["rows"][0] if report["rows"] else None
    example = f" (first: {first['file']} row {first['index']}: {first['strings']})" if first else ""
    return (
        f"{report['rows_count']} row(s) hold control strings in their text{example}, listed in the data card; "
        "the trainer tokenises them as plain text, never as control tokens"
    )
