"""pass@k against hand-computed values and brute-force enumeration; avg@k, maj@k, summaries."""

from __future__ import annotations

import itertools
import math

import pytest

from evaluation.metrics import avg_at_k, maj_at_k, mean_and_stderr, pass_at_k, powers_of_two_up_to, summarize

# (n, c, k, value computed by hand as 1 - C(n-c, k) / C(n, k))
HAND = [
    (5, 2, 1, 2 / 5),  # 1 - 3/5
    (5, 2, 2, 7 / 10),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 9 / 10),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),  # n - c < k: every 4-subset holds a correct sample
    (4, 1, 2, 1 / 2),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (10, 0, 5, 0.0),
    (10, 10, 1, 1.0),
    (32, 8, 1, 0.25),
    (16, 1, 4, 1 / 4),  # 1 - C(15,4)/C(16,4) = 1 - 12/16
    (8, 3, 2, 1 - 10 / 28),  # 1 - C(5,2)/C(8,2)
]


@pytest.mark.parametrize("n,c,k,expected", HAND)
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration(n: int):
    """Exactly the chance that a random k-subset of the n samples contains a correct one."""
    for c in range(n + 1):
        flags = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            hit = sum(any(flags[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(hit, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_1_is_avg():
    assert pass_at_k(7, 3, 1) == pytest.approx(avg_at_k([True] * 3 + [False] * 4))


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_large_n_is_stable():
    assert 0.0 < pass_at_k(1024, 1, 1) < pass_at_k(1024, 1, 512) < 1.0
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5)


def test_avg_and_maj():
    assert avg_at_k([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        avg_at_k([])
    assert maj_at_k(["3", "3", "4", None], [True, True, False, False]) == 1.0
    assert maj_at_k(["4", "3", "4", "3 "], [False, True, False, True]) == 0.0  # tie -> first seen ("4")
    assert maj_at_k([None, None], [False, False]) == 0.0
    assert maj_at_k(["\\dfrac{1}{2}", "\\frac{1}{2}", "2"], [True, True, False]) == 1.0


def test_powers_and_stderr():
    assert powers_of_two_up_to(1) == [1]
    assert powers_of_two_up_to(8) == [1, 2, 4, 8]
    assert powers_of_two_up_to(6) == [1, 2, 4, 6]
    m, se = mean_and_stderr([0.0, 1.0])
    assert m == 0.5 and se == pytest.approx(0.5)
    assert mean_and_stderr([0.3]) == (0.3, 0.0)


def test_summarize_counts_every_problem_once():
    """Avg@n is the mean over problems, not over copies of a problem."""

    def prob(flags, finish=None, errors=0):
        return {
            "correct": flags,
            "answers": ["1" if f else "0" for f in flags],
            "finish": finish or ["stop"] * len(flags),
            "boxed": [True] * len(flags),
            "errors": errors,
        }

    s = summarize([prob([True, True, False, False]), prob([False] * 4, finish=["length"] * 4)], n=4)
    assert s["avg@4"] == pytest.approx(0.25)
    assert s["avg@4_stderr"] == pytest.approx(0.25)
    assert s["pass@k"]["1"]["value"] == pytest.approx(0.25)
    assert s["pass@k"]["2"]["value"] == pytest.approx((1 - 1 / 6) / 2)
    assert s["pass@k"]["4"]["value"] == pytest.approx(0.5)
    assert s["maj@4"] == pytest.approx(0.5)  # tie "1" vs "0": "1" seen first in problem one
    assert s["truncated_share"] == pytest.approx(0.5)
    assert s["boxed_share"] == 1.0
    short = summarize([prob([True, False], errors=2)], n=4)
    assert short["problems_short"] == 1 and short["samples_errored"] == 2
    assert "4" not in short["pass@k"]


def test_failed_samples_count_as_incorrect_in_the_headline():
    """A problem whose requests kept failing stays in the denominator: accuracy is never inflated."""

    def prob(flags, errors=0, missing=0):
        return {
            "correct": flags,
            "answers": ["1"] * len(flags),
            "finish": ["stop"] * len(flags),
            "boxed": [True] * len(flags),
            "errors": errors,
            "missing": missing,
        }

    s = summarize([prob([True, True]), prob([], errors=2), prob([True], missing=1)], n=2)
    assert s["avg@2"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert s["avg@2_graded_only"] == pytest.approx(1.0)  # what the old code reported
    assert s["problems_failed"] == 2 and s["problems"] == 3
