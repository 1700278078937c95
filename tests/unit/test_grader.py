"""The grader on hand-labelled cases: (response, ground truth, expected verdict)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from time_limits import limit

from evaluation.grader import choice_letter, extract_answer, grade, is_correct, last_boxed

B = "\\boxed"

# (id, response, ground_truth, expected)
CASES = [
    # integers and plain numbers
    ("int", f"So {B}{{42}}.", "42", True),
    ("int-wrong", f"So {B}{{41}}.", "42", False),
    ("negative", f"{B}{{-7}}", "-7", True),
    ("thousands-sep", f"{B}{{1,000}}", "1000", True),
    ("decimal-vs-int", f"{B}{{5.0}}", "5", True),
    ("sci", f"{B}{{2^{{10}}}}", "1024", True),
    ("dollar-sign", f"{B}{{\\$5}}", "5", True),
    # fractions
    ("frac", f"{B}{{\\frac{{1}}{{2}}}}", "\\frac{1}{2}", True),
    ("dfrac", f"{B}{{\\dfrac{{3}}{{4}}}}", "\\frac{3}{4}", True),
    ("frac-decimal", f"{B}{{0.5}}", "\\frac{1}{2}", True),
    ("frac-slash", f"{B}{{1/2}}", "\\frac12", True),
    ("frac-neg", f"{B}{{\\frac{{-1}}{{3}}}}", "-\\frac{1}{3}", True),
    ("frac-wrong", f"{B}{{\\frac{{1}}{{3}}}}", "\\frac{1}{2}", False),
    ("frac-gold-decimal", f"{B}{{\\frac{{3}}{{4}}}}", "0.75", True),
    # radicals
    ("sqrt-simplify", f"{B}{{\\sqrt{{8}}}}", "2\\sqrt{2}", True),
    ("sqrt-frac", f"{B}{{\\frac{{1}}{{2}}\\sqrt{{3}}}}", "\\frac{\\sqrt{3}}{2}", True),
    ("sqrt-wrong", f"{B}{{\\sqrt{{3}}}}", "\\sqrt{2}", False),
    ("sqrt-rationalised", f"{B}{{\\frac{{1}}{{\\sqrt{{2}}}}}}", "\\frac{\\sqrt{2}}{2}", True),
    ("cube-root", f"{B}{{\\sqrt[3]{{27}}}}", "3", True),
    # symbolic
    ("poly-expand", f"{B}{{(x+1)^2}}", "x^2+2x+1", True),
    ("pi", f"{B}{{2\\pi}}", "2\\pi", True),
    ("pi-wrong", f"{B}{{3\\pi}}", "2\\pi", False),
    ("equation-rhs", f"{B}{{x = 3}}", "3", True),
    ("gold-equation", f"{B}{{3}}", "x=3", True),
    ("infinity", f"{B}{{\\infty}}", "\\infty", True),
    # sets
    ("set-order", f"{B}{{\\{{2, 1\\}}}}", "\\{1,2\\}", True),
    ("set-vs-list", f"{B}{{1, 2}}", "\\{1,2\\}", True),
    ("set-wrong", f"{B}{{\\{{1, 3\\}}}}", "\\{1,2\\}", False),
    # intervals
    ("interval", f"{B}{{(1, 2]}}", "(1,2]", True),
    ("interval-closedness", f"{B}{{[0,1]}}", "[0,1)", False),
    ("interval-inf", f"{B}{{(-\\infty, 3]}}", "(-\\infty,3]", True),
    ("interval-union", f"{B}{{(-\\infty,0)\\cup(1,\\infty)}}", "(-\\infty,0)\\cup(1,\\infty)", True),
    # tuples / points
    ("tuple", f"{B}{{(1, 2)}}", "(1,2)", True),
    ("tuple-order", f"{B}{{(2, 1)}}", "(1,2)", False),
    ("tuple-3", f"{B}{{(1,-1,2)}}", "(1,-1,2)", True),
    # units and degrees
    ("units-text", f"{B}{{10 \\text{{ cm}}}}", "10", True),
    ("units-gold", f"{B}{{3}}", "3\\text{ m}", True),
    ("degrees", f"{B}{{30^\\circ}}", "30", True),
    ("units-wrong", f"{B}{{12 \\text{{ cm}}}}", "10", False),
    # percent
    ("percent-both", f"{B}{{50\\%}}", "50\\%", True),
    ("percent-bare-pred", f"{B}{{50}}", "50\\%", True),
    ("percent-wrong", f"{B}{{40\\%}}", "50\\%", False),
    # last boxed wins, nesting
    ("last-boxed", f"First {B}{{3}}, then corrected: {B}{{4}}", "4", True),
    ("last-boxed-not-first", f"First {B}{{4}}, then corrected: {B}{{3}}", "4", False),
    ("nested-braces", f"{B}{{\\frac{{\\sqrt{{3}}}}{{2}}}}", "\\frac{\\sqrt{3}}{2}", True),
    ("fbox", "\\fbox{7}", "7", True),
    ("boxed-space", f"{B} 7", "7", True),
    ("boxed-in-dollars", f"$${B}{{12}}$$", "12", True),
    ("truncated-last-box", f"{B}{{5}} and then {B}{{\\frac{{1}}{{", "5", True),
    ("boxed-text-word", f"{B}{{\\text{{Monday}}}}", "\\text{Monday}", True),
    # think tags
    ("think-after", f"<think>maybe {B}{{3}}</think>The answer is {B}{{4}}", "4", True),
    ("think-after-wins", f"<think>maybe {B}{{4}}</think>Final: {B}{{3}}", "4", False),
    ("think-no-answer-after", f"<think>so {B}{{9}}</think>I am done.", "9", True),
    ("think-unclosed", f"<think>long reasoning {B}{{6}}", "6", True),
    ("think-answer-is-after", f"<think>{B}{{1}}</think>The answer is: 2", "2", True),
    # "The answer is"
    ("answer-is", "Therefore, the answer is: 12.", "12", True),
    ("answer-is-latex", "The answer is $\\frac{2}{3}$.", "\\frac{2}{3}", True),
    ("answer-is-wrong", "The answer is 13", "12", False),
    ("final-answer", "Final Answer: 8", "8", True),
    ("boxed-beats-answer-is", f"The answer is 3. Actually {B}{{5}}", "5", True),
    # multiple choice
    ("mc-boxed", f"{B}{{C}}", "C", True),
    ("mc-paren", "The answer is (C).", "C", True),
    ("mc-text", f"{B}{{\\text{{(B)}}}}", "B", True),
    ("mc-wrong", f"{B}{{D}}", "C", False),
    ("mc-with-content", f"{B}{{C) 42}}", "C", True),
    ("mc-gold-paren", f"{B}{{A}}", "(A)", True),
    ("mc-value-not-letter", f"{B}{{42}}", "C", False),
    ("mc-bold", "The answer is **B**", "B", True),
    # gold formats the original got wrong
    ("gold-boxed", f"{B}{{7}}", f"{B}{{7}}", True),
    ("gold-dollars", f"{B}{{7}}", "$7$", True),
    # empty and adversarial
    ("empty-response", "", "1", False),
    ("no-answer", "I think it is probably something.", "1", False),
    ("empty-box", f"{B}{{}}", "1", False),
    ("empty-gold", f"{B}{{1}}", "", False),
    ("unbalanced", f"{B}{{{{{{1}}", "1", False),
    ("python-injection", f"{B}{{__import__('os').system('touch /tmp/psft_pwned')}}", "0", False),
    ("latex-garbage", f"{B}{{\\frac{{\\frac{{\\frac{{}}}}}}}}", "1", False),
    ("huge-number", f"{B}{{{'9' * 5000}}}", "1", False),
]


@pytest.mark.parametrize("response,gold,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_labelled_case(response: str, gold: str, expected: bool):
    assert is_correct(response, gold) is expected


def test_case_count():
    """The issue asks for >= 60 labelled cases, with distinct ids (test_labelled_case grades each)."""
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_model_text_is_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    response = f"\\boxed{{__import__('os').system('touch {marker}')}} The answer is eval('1')"
    assert not is_correct(response, "0")
    assert not marker.exists()


def test_pathological_expression_is_bounded():
    """A tower that SymPy would expand forever returns False within the hard timeout."""
    start = time.monotonic()
    assert is_correct("\\boxed{9^{9^{9^{9^{9^{9}}}}}}", "1", timeout_s=2.0) is False
    assert time.monotonic() - start < limit(8.0)
    # The grader still works after a timeout (the helper process is restarted when it was killed).
    assert is_correct("\\boxed{\\frac{1}{2}}", "0.5")


def test_extraction_details():
    assert last_boxed("a \\boxed{\\{1,2\\}} b") == "\\{1,2\\}"
    assert last_boxed("\\boxed{a{b}c} \\boxed{d}") == "d"
    assert last_boxed("no box") is None
    assert extract_answer("<think>\\boxed{1}</think>\\boxed{2}") == ("2", True)
    assert extract_answer("The answer is: 7.") == ("7", False)
    assert extract_answer("") == (None, False)
    assert choice_letter("(C) 12") == "C"
    assert choice_letter("12") is None
    # Letters past J: TruthfulQA's mc1 questions have up to 13 options (A-M).
    assert choice_letter("K) o10") == "K" and choice_letter("\\text{(M)}") == "M"
    assert grade("The answer is (K).", "K").correct and grade("\\boxed{K) o10}", "K").correct
    assert not grade("\\boxed{L}", "K").correct
    g = grade("\\boxed{3}", "3")
    assert g.extracted == "3" and g.boxed and g.correct


# Inputs that made extraction quadratic (or the old "answer is" regex backtrack), each about 1 MB.
MB = 1 << 20
ADVERSARIAL = {
    "unclosed-boxes": "\\boxed{" * (MB // 7),
    "unclosed-then-closed": "\\boxed{1} " + "\\boxed{" * (MB // 7),
    "bare-boxes": "\\boxed " * (MB // 7),
    "answer-is-then-spaces": "The answer is" + " " * MB,
    "many-answer-is": "answer is " * (MB // 10),
    "trailing-dots": "The answer is 5" + "." * MB + "x",
    "nested-open-braces": "\\boxed{" + "{" * MB,
    "text-wrappers": "\\boxed{" + "\\text{a}" * (MB // 8) + "}",
    "think-tags": "</think>" * (MB // 8),
    "newlines": "\\boxed{1" + "\n" * MB,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_extraction_is_linear(name: str):
    """1 MB of adversarial text is read in well under a second (the old code took minutes on some)."""
    text = ADVERSARIAL[name]
    start = time.monotonic()
    extract_answer(text)
    small = time.monotonic() - start
    assert small < limit(2.0), f"{name}: {small:.2f} s for {len(text)} characters"


def test_grade_is_bounded_on_any_input():
    """grade() returns within twice the timeout on 1 MB inputs, also right after a killed helper."""
    from evaluation.grader import warm_up

    warm_up()
    timeout = 2.0
    cases = [(text, "1") for text in ADVERSARIAL.values()]
    cases += [("\\boxed{9^{9^{9^{9^{9^{9}}}}}}", "1"), ("x" * MB + "\\boxed{" + "9^{" * 500 + "}" * 500 + "}", "2")]
    cases += [("\\boxed{" + "(" * 1500 + "}", "1"), (ADVERSARIAL["unclosed-boxes"], "C")]
    for response, gold in cases:
        start = time.monotonic()
        grade(response, gold, timeout_s=timeout)
        took = time.monotonic() - start
        assert took < limit(2 * timeout), f"{took:.1f} s on {response[:40]!r}..."


def test_rl_reward_uses_the_bounded_grader():
    from evaluation.verl_reward import compute_score

    start = time.monotonic()
    assert compute_score("x", "\\boxed{" * (MB // 7), "1") == 0.0
    assert compute_score("x", "so \\boxed{12}", "12") == 1.0
    assert time.monotonic() - start < limit(5.0)


def test_interrupt_stops_a_waiting_check(fresh_pool):
    """After interrupt(), a check waiting on math-verify raises instead of recording a verdict, and the
    helper it held is killed (its late answer must never be read as another check's)."""
    import threading

    from evaluation.grader import GradingInterrupted, clear_interrupt, interrupt, warm_up

    fresh_pool.configure(max_helpers=1)
    warm_up()
    (busy,) = fresh_pool.helper_pids()
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            grade("\\boxed{9^{9^{9^{9^{9^{9}}}}}}", "1", timeout_s=30.0)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1.0)
    start = time.monotonic()
    interrupt()
    thread.join(10)
    clear_interrupt()
    assert not thread.is_alive() and time.monotonic() - start < limit(2.0)
    assert errors and isinstance(errors[0], GradingInterrupted)
    assert _dead(busy)
    assert is_correct("\\boxed{\\frac{1}{2}}", "0.5")  # usable again afterwards


# ---------------------------------------------------------------------------------- grader hygiene


@pytest.fixture
def fresh_pool():
    """Tests that reconfigure the helper pool leave the default one behind."""
    from evaluation import grader

    yield grader
    grader.configure()


def _dead(pid: int) -> bool:
    """The process is gone or a zombie (a container's init may reap late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_grading_timeout_is_recorded_as_a_timeout():
    """Before: a check that ran out of time was a plain False, indistinguishable from a wrong answer."""
    from evaluation.grader import grade_fields, warm_up

    warm_up()
    fields = grade_fields("\\boxed{9^{9^{9^{9^{9^{9}}}}}}", "1", timeout_s=2.0)
    assert fields["correct"] is False and fields["grading_failure"] == "timeout"
    ok = grade_fields("\\boxed{\\frac{1}{2}}", "0.5")
    assert ok["correct"] is True and ok["grading_failure"] is None
    assert grade("\\boxed{3}", "4").failure is None  # a wrong answer is not a failure


def test_helpers_are_a_bounded_pool(fresh_pool):
    """Six threads grading at once share two helpers; none is left per thread when they end (before: one
    helper per thread, never reaped)."""
    import threading

    fresh_pool.configure(max_helpers=2)
    fresh_pool.warm_up()
    seen: list[int] = []
    results: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(len(fresh_pool.helper_pids()))
            time.sleep(0.05)

    def work(i: int) -> None:
        for j in range(3):
            results.append(is_correct(f"\\boxed{{\\frac{{{i + j + 1}}}{{2}}}}", str((i + j + 1) / 2)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit(120))
    stop.set()
    watcher.join()
    assert results == [True] * 18
    assert max(seen) <= 2 and len(fresh_pool.helper_pids()) <= 2


_PARENT_SCRIPT = r"""
import sys, threading, time
from evaluation import grader
from evaluation.ifeval import ifeval_ground_truth
grader.warm_up(ifeval=True)
gt = ifeval_ground_truth(["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}])
# Counting the sentences of 1 MB with punkt keeps the helper busy for about a minute.
threading.Thread(target=grader.grade, args=("This is a sentence. " * 50000, gt, 600.0), daemon=True).start()
time.sleep(2.0)
print(" ".join(map(str, grader.helper_pids())), flush=True)
time.sleep(600)
"""


def test_helpers_die_with_their_parent():
    """A parent killed with SIGKILL while its helper is busy takes the helper with it at once. (Before, a
    helper noticed only when it next read stdin, after finishing whatever it was doing.)"""
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("lm_eval")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids and not any(_dead(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + limit(5.0)
    while time.monotonic() < deadline and not all(_dead(p) for p in pids):
        time.sleep(0.1)
    assert all(_dead(p) for p in pids), f"helpers {pids} outlived their parent"


def test_helpers_have_a_memory_limit(fresh_pool):
    """Each helper's address space is capped; a check that needs more is recorded as 'memory', counted
    incorrect, and the next check gets a fresh helper."""
    pytest.importorskip("lm_eval")
    from evaluation.ifeval import ifeval_ground_truth

    fresh_pool.configure(memory_mb=450)
    fresh_pool.warm_up(ifeval=True)
    (pid,) = fresh_pool.helper_pids()
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max address space"))
    assert line.split()[3:5] == [str(450 << 20), str(450 << 20)]
    gt = ifeval_ground_truth(["length_constraints:number_words"], [{"relation": "at least", "num_words": 3}])
    # Counting 5 M words builds a list of 5 M strings (NLTK's RegexpTokenizer): over 450 MiB.
    g = grade("word " * 5_000_000, gt, timeout_s=60)
    assert g.correct is False and g.failure == "memory"
    assert grade("three words here", gt).correct is True


def test_a_pending_ifeval_load_is_read_before_a_math_answer(fresh_pool):
    """A replacement for an IFEval helper starts loading the checkers unasked-for by its next user; a math
    check on it must read that answer first, not take it (or any later one) as its own verdict."""
    from evaluation import grader

    fresh_pool.configure(max_helpers=1)
    grader.warm_up()
    pool = grader._pool()
    helper = pool.acquire()
    helper.start_ifeval_load()  # what _Pool.release does for the replacement of an IFEval helper
    pool.release(helper, healthy=True)
    assert helper.load_pending
    assert is_correct("\\boxed{\\sqrt{3}}", "\\sqrt{2}") is False
    assert is_correct("\\boxed{\\frac{1}{2}}", "0.5") is True
    assert is_correct("\\boxed{3\\pi}", "2\\pi") is False
