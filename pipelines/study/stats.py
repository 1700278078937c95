"""Statistics over the study's two sources of spread, and the rule that turns a difference into a sentence.

Every measurement comes from one pretrained model (pretraining seed p) and one fine-tuning seed s
(training sample and order). Values are held as ``{p: {s: value}}``. For a balanced design with P
pretrained models and S fine-tuning seeds each:

* the estimate is the grand mean;
* ``sd_between``: standard deviation over the P per-pretrain means (spread between pretrained models,
  which also carries 1/S of the within spread);
* ``sd_within``: pooled standard deviation over fine-tuning seeds inside each pretrained model;
* ``se``: standard error of the grand mean, ``sd_between / sqrt(P)`` (the two-level design's estimator:
  the per-pretrain means are the independent units). With one pretrained model it falls back to
  ``sd_within / sqrt(S)``, which ignores the between-pretrain spread (reported as such).

Comparisons are paired: two conditions run on the same pretrained models with the same fine-tuning
seeds (same training sample and order), so their difference is taken per (p, s) and summarised the same
way. **Rule**: a difference is read as real when ``|mean| > 2 * se`` of the paired difference and
``|mean| >= 0.01`` (``MIN_EFFECT``); otherwise it is "no difference within the spread".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Nested = dict[int, dict[int, float]]  # pretraining seed -> fine-tuning seed -> value

SIGNIFICANCE = 2.0  # |difference| must exceed this many standard errors
# ... and this floor: one point of accuracy or retention, 0.01 nats of entropy. Without it a difference
# that is consistent but negligible (two conditions that barely differ have a standard error near 0)
# would be read as real.
MIN_EFFECT = 0.01


@dataclass(frozen=True)
class Spread:
    mean: float
    se: float
    sd_between: float
    sd_within: float
    pretrains: int
    seeds: int  # values in all

    def cell(self, digits: int = 3) -> str:
        """``mean ± se`` for a table (se over pretrained models as the text says)."""
        return f"{self.mean:.{digits}f} ± {self.se:.{digits}f}"

    def cell_full(self, digits: int = 3) -> str:
        spreads = f"(b {self.sd_between:.{digits}f}, w {self.sd_within:.{digits}f})"
        return f"{self.mean:.{digits}f} ± {self.se:.{digits}f} {spreads}"


def _sd(values: list[float]) -> float:
    """Sample standard deviation; NaN in, NaN out (``statistics.stdev`` raises on NaN)."""
    mean = statistics.fmean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def two_level(values: Nested) -> Spread:
    """Grand mean, its standard error and both spreads of ``{pretrain: {seed: value}}``."""
    groups = [list(by_seed.values()) for _, by_seed in sorted(values.items()) if by_seed]
    if not groups:
        raise ValueError("two_level: no values")
    flat = [v for g in groups for v in g]
    means = [statistics.fmean(g) for g in groups]
    grand = statistics.fmean(means)
    residual_dof = sum(len(g) - 1 for g in groups)
    within = (
        math.sqrt(sum((v - statistics.fmean(g)) ** 2 for g in groups for v in g) / residual_dof)
        if residual_dof
        else 0.0
    )
    between = _sd(means) if len(means) > 1 else 0.0
    if len(means) > 1:
        se = between / math.sqrt(len(means))
    else:
        se = within / math.sqrt(len(flat)) if len(flat) > 1 else 0.0
    return Spread(grand, se, between, within, len(groups), len(flat))


def paired_difference(a: Nested, b: Nested) -> Spread:
    """``a - b`` per (pretrain, seed) present in both, summarised by :func:`two_level`."""
    diff = {
        p: {s: a[p][s] - b[p][s] for s in a[p] if s in b.get(p, {})}
        for p in a
        if p in b
    }
    diff = {p: d for p, d in diff.items() if d}
    if not diff:
        raise ValueError("paired_difference: the two conditions share no (pretraining seed, fine-tuning seed)")
    return two_level(diff)


def is_real(diff: Spread) -> bool:
    """The rule: the difference exceeds ``SIGNIFICANCE`` standard errors and ``MIN_EFFECT``."""
    return abs(diff.mean) >= MIN_EFFECT and abs(diff.mean) > SIGNIFICANCE * diff.se


def verdict(diff: Spread, a: str, b: str, metric: str, higher: str = "higher", lower: str = "lower") -> str:
    """One sentence on ``a - b`` for ``metric``, chosen by :func:`is_real`."""
    numbers = f"{diff.mean:+.3f} ± {diff.se:.3f} (2 SE = {SIGNIFICANCE * diff.se:.3f})"
    if not is_real(diff):
        return f"{metric}: no difference within the spread between {a} and {b} ({numbers})."
    word = higher if diff.mean > 0 else lower
    return f"{metric}: {a} is {word} than {b} ({numbers})."


def attribute(gap: Spread, trust_region: Spread, learning_rate: Spread, metric: str) -> str:
    """Where a gap between the paper's two runs comes from, by the same rule on each part.

    ``gap`` = PSFT(low lr) - SFT(high lr, one update per step); it splits exactly into
    ``trust_region`` = PSFT(low lr) - SFT(low lr, same updates) and ``learning_rate`` =
    SFT(low lr, same updates) - SFT(high lr, one update per step).
    """
    parts = f"gap {gap.mean:+.3f} ± {gap.se:.3f} = trust region {trust_region.mean:+.3f} ± {trust_region.se:.3f} " \
            f"+ learning rate and update count {learning_rate.mean:+.3f} ± {learning_rate.se:.3f}"
    tr, lr = is_real(trust_region), is_real(learning_rate)
    if not is_real(gap):
        if tr and lr:
            reading = "no gap within the spread: the trust region and the learning rate each move it, and cancel"
        elif tr or lr:
            part = "trust region" if tr else "learning rate and update count"
            reading = f"no gap within the spread (only the {part} part exceeds its own spread)"
        else:
            reading = "no gap within the spread"
    elif tr and not lr:
        reading = "the gap comes from the trust region"
    elif lr and not tr:
        reading = "the gap comes from the learning rate and update count, not the trust region"
    elif tr and lr:
        share = learning_rate.mean / gap.mean if gap.mean else float("nan")
        reading = f"both parts contribute (learning rate and update count: {share:.0%} of the gap)"
    else:
        reading = "the gap is real but neither part alone exceeds its spread"
    return f"{metric}: {reading} ({parts})."
