"""Test problems that also appear in the training set: always reported, dropped only on request.

A test set is never changed silently: a benchmark with problems removed is no longer the benchmark, and
its numbers no longer compare with anyone else's. So the overlap (the same problem text, compared with
whitespace normalised and system turns ignored, the key de-duplication uses) goes into the data card per
test file, and ``prepare_data.py --decontaminate`` removes those problems from the test files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prepare.records import Example, prompt_key
from recipe.psft.rows import RowProblem

LISTED = 200  # rows listed per test file in the card; the counts are always complete


@dataclass
class Overlap:
    """Overlap found per test file, and whether it was dropped."""

    decontaminate: bool = False
    found: dict[str, list[RowProblem]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def check(
        self,
        name: str,
        pairs: list[tuple[Example, list[dict[str, str]]]],
        train: dict[str, Example],
    ) -> list[tuple[Example, list[dict[str, str]]]]:
        """Record which test rows of file ``name`` repeat a training prompt; drop them only when
        decontaminating. Returns the rows to write."""
        kept, hits = [], []
        for example, messages in pairs:
            first = train.get(prompt_key(messages))
            if first is None:
                kept.append((example, messages))
                continue
            hits.append(
                RowProblem(
                    example.origin,
                    example.row,
                    example.key("prompt"),
                    f"same problem as training row {first.row} ({first.origin})",
                )
            )
            if not self.decontaminate:
                kept.append((example, messages))
        self.sizes[name] = len(pairs)
        if hits:
            self.found[name] = hits
        return kept

    def card(self) -> dict[str, Any]:
        """The data card's ``overlap_with_training`` section."""
        return {
            "compared": "problem text (non-system turns, whitespace-normalised) against every training prompt",
            "action": "dropped from the test files (--decontaminate)"
            if self.decontaminate
            else "kept (pass --decontaminate to drop)",
            "files": {
                name: {
                    "test_rows": self.sizes[name],
                    "overlapping": len(self.found.get(name, [])),
                    "rows": [p.as_dict() for p in self.found.get(name, [])[:LISTED]],
                }
                for name in sorted(self.sizes)
            },
        }

    def lines(self) -> list[str]:
        """Console lines for files with overlap."""
        verb = "dropped" if self.decontaminate else "kept; --decontaminate drops them"
        return [
            f"{name}: {len(hits)} of {self.sizes[name]} test problem(s) also in the training set ({verb})"
            for name, hits in sorted(self.found.items())
        ]
