"""Sampling metrics over n graded samples per problem: pass@k, avg@k, maj@k, and their summaries.

pass@k uses the unbiased estimator of Chen et al. (2021): with n samples of which c are correct,
pass@k = 1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement from the n
contain a correct one. Averaging "any of the first k correct" instead is biased and noisy.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct."""
    if not (0 <= c <= n):
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): equal to 1 - C(n-c,k)/C(n,k), without huge binomials.
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean correctness of a problem's samples (Avg@k, the paper's headline metric)."""
    if not correct:
        raise ValueError("avg@k of zero samples is undefined")
    return sum(bool(x) for x in correct) / len(correct)


def _vote_key(answer: str) -> str:
    return re.sub(r"\s+", "", answer).replace("\\dfrac", "\\frac").rstrip(".")


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """1.0 when the most common extracted answer is a correct one, else 0.0.

    Answers are voted by their whitespace-normalised text (samples without an answer do not vote);
    ties go to the answer seen first. Samples with the same text are graded alike, so the winner's
    first sample decides.
    """
    if len(answers) != len(correct):
        raise ValueError("answers and correct must have the same length")
    votes = Counter()
    first_seen: dict[str, int] = {}
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        key = _vote_key(ans)
        votes[key] += 1
        first_seen.setdefault(key, i)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = min((first_seen[key] for key, count in votes.items() if count == top))
    return 1.0 if correct[winner] else 0.0


def powers_of_two_up_to(n: int) -> list[int]:
    """k = 1, 2, 4, ... <= n, plus n itself (so pass@n is always reported)."""
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(count)); stderr 0 for one value."""
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


# How the headline average treats samples that were never graded (requests that kept failing, or a
# run stopped early); written into every summary so a number is never read without it.
FAILED_COUNTING = (
    "avg@n counts every sample that failed or is missing as incorrect (each problem's accuracy is "
    "correct / n), so failures never inflate it; avg@n_graded_only averages graded samples only; "
    "pass@k and maj@n use graded samples only"
)


def summarize(problems: Iterable[dict], n: int) -> dict:
    """Metrics over problems, each ``{"correct": [bool, ...], "answers": [...], "finish": [...],
    "boxed": [...], "errors": int, "missing": int}`` holding its graded samples (errored and missing
    samples are not in the lists, only counted).

    ``avg@n`` counts failed and missing samples as incorrect (see :data:`FAILED_COUNTING`); a problem with
    fewer than n graded samples contributes to pass@k only for k <= its count. ``problems_failed`` says
    how many problems have any failed or missing sample, so a partial run is never mistaken for a full one.
    """
    problems = list(problems)
    graded = [p for p in problems if p["correct"]]
    strict = [sum(bool(x) for x in p["correct"]) / n for p in problems]
    avg, se = mean_and_stderr(strict)
    graded_avg, graded_se = mean_and_stderr([avg_at_k(p["correct"]) for p in graded])
    out: dict = {
        "problems": len(problems),
        "problems_graded": len(graded),
        "problems_short": sum(1 for p in problems if len(p["correct"]) < n),
        "problems_failed": sum(1 for p in problems if p.get("errors", 0) + p.get("missing", 0) > 0),
        "samples_graded": sum(len(p["correct"]) for p in problems),
        "samples_errored": sum(p.get("errors", 0) for p in problems),
        f"avg@{n}": avg,
        f"avg@{n}_stderr": se,
        f"avg@{n}_graded_only": graded_avg,
        f"avg@{n}_graded_only_stderr": graded_se,
        "pass@k": {},
        f"maj@{n}": None,
    }
    for k in powers_of_two_up_to(n):
        vals = [pass_at_k(len(p["correct"]), sum(p["correct"]), k) for p in graded if len(p["correct"]) >= k]
        if vals:
            m, s = mean_and_stderr(vals)
            out["pass@k"][str(k)] = {"value": m, "stderr": s, "problems": len(vals)}
    if graded:
        out[f"maj@{n}"] = sum(maj_at_k(p["answers"], p["correct"]) for p in graded) / len(graded)
    finishes = [f for p in problems for f in p["finish"]]
    boxed = [b for p in problems for b in p["boxed"]]
    out["truncated_share"] = (sum(1 for f in finishes if f == "length") / len(finishes)) if finishes else None
    out["boxed_share"] = (sum(1 for b in boxed if b) / len(boxed)) if boxed else None
    return out
