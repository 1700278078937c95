"""Holding out a seeded-random test set from the training input."""

from __future__ import annotations

import random
from collections import Counter

from prepare.records import Example, prompt_key
from recipe.psft.rows import DataError, as_messages, prompt_problem


def hold_out(examples: list[Example], test_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``test_size`` seeded-random rows as the test set; both parts keep the input order.

    Only rows whose prompt is valid and appears once in the input are eligible, so a held-out problem never
    also sits in training (and the test set gets exactly ``test_size`` rows).
    """
    if test_size == 0:
        return examples, []
    keys = [prompt_key(as_messages(e.prompt)) if prompt_problem(e.prompt) is None else None for e in examples]
    counts = Counter(k for k in keys if k is not None)
    eligible = [i for i, k in enumerate(keys) if k is not None and counts[k] == 1]
    if test_size >= len(examples) or test_size > len(eligible):
        raise DataError(
            f"--test-size {test_size} is too large: {len(examples)} input rows, {len(eligible)} with a unique prompt"
        )
    chosen = set(random.Random(seed).sample(eligible, test_size))
    train = [e for i, e in enumerate(examples) if i not in chosen]
    return train, [e for i, e in enumerate(examples) if i in chosen]
