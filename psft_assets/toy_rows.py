"""Toy arithmetic demonstrations in ``prepare_data.py``'s output layout (for tests and benchmarks)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd


def make_rows(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    """``n`` toy demonstrations of varied length; every ``long_every``-th one is 8x longer."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        steps = " ".join(f"Step {j}: {a} + {j} = {a + j}." for j in range(rng.randint(1, 6)))
        if long_every and i % long_every == 0:
            steps = steps * 8
        rows.append(
            {
                "data_source": "toy_add",
                "prompt": [
                    {"role": "system", "content": "Please reason step by step."},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                ],
                "demonstration": f"{steps} So {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.",
                "ability": "math",
                "reward_model": {"ground_truth": str(a + b), "style": "rule"},
                "extra_info": {"split": "train", "index": i},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    """Write ``rows`` to ``path`` (parents created) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path
