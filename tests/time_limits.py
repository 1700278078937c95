"""Wall-clock limits in tests ("exits within a few seconds", "bounded by twice the timeout"), scaled for a
loaded machine: every limit is multiplied by ``PSFT_TEST_TIME_FACTOR`` (default 1). Set it to 2-3 when
another suite, a benchmark or a build shares the cores; the limits stay far below what a hang would take.
"""

from __future__ import annotations

import os

FACTOR = float(os.environ.get("PSFT_TEST_TIME_FACTOR", "1"))


def limit(seconds: float) -> float:
    """``seconds`` scaled by PSFT_TEST_TIME_FACTOR."""
    return seconds * FACTOR
