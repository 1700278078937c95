"""Grade a model response against a reference answer.

Extraction is done here, by hand, so that what counts as "the answer" is explicit and testable:

1. text after the last ``</think>`` is searched first (a reasoning model's final answer lives there);
   when it holds no answer, the whole response is searched;
2. the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) wins, nested and escaped braces handled;
3. otherwise the last "The answer is: X" / "Final answer: X".

Equivalence goes through math-verify, with both sides wrapped as ``$...$`` (math-verify's LaTeX
extractor expects delimited math; the original built ``\\boxed{$x}$``, which it cannot read).
Multiple-choice golds (a single letter A-J) are compared as letters without SymPy.

Model text is never evaluated as Python. Every math-verify call runs in a helper process
(:mod:`evaluation._verify_worker`) with a hard wall-clock limit: SymPy can hang inside C code where a
signal-based timeout never fires, so the worker is killed and the check returns False.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Bump whenever a change can turn a verdict: results graded by another version are not mixed.
GRADER_VERSION = "2"
DEFAULT_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 120.0
# Longer extracted answers are compared as strings only: nothing a grader should parse is this long.
MAX_ANSWER_CHARS = 2000

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS_RE = re.compile(r"final\s+answer|answer\s+is", re.IGNORECASE)
_BARE_ARGUMENT_RE = re.compile(r"[^\s$]+")
_CHOICE_RE = re.compile(r"^\(?([A-J])\)?(?:[.:)]|\s|$)")
_LETTERS = frozenset("ABCDEFGHIJ")


@dataclass(frozen=True)
class Grade:
    """What the grader saw: the extracted answer (None when nothing was found), whether it came from a
    ``\\boxed{}``, and the verdict."""

    extracted: str | None
    boxed: bool
    correct: bool


def _match_braces(text: str, open_idx: int, stop: int | None = None) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, searching before ``stop`` (default: the end);
    escaped braces (``\\{``) do not count."""
    depth = 0
    i = open_idx
    n = len(text) if stop is None else min(stop, len(text))
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_argument_start(text: str, start: int, command: str) -> int | None:
    """Where the argument of the box command at ``start`` begins (after spaces), or None for another
    command that merely starts the same way (``\\boxedsomething``) or a box at the very end."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():
        return None
    while i < len(text) and text[i] == " ":
        i += 1
    return i if i < len(text) else None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}``/``\\fbox{...}`` in ``text``, or None.

    An unterminated last box (a response cut by the token limit) is skipped, so an earlier complete
    box can still count. Linear in ``len(text)``: candidates are tried from the last one back, and a
    box whose brace never closes bounds the search of every earlier one (an earlier ``{`` that is still
    open when the later box starts stays open at least as long), so no character is scanned twice.
    """
    positions = []
    for command in _BOX_COMMANDS:
        pos = text.find(command)
        while pos != -1:
            positions.append((pos, command))
            pos = text.find(command, pos + 1)
    stop = len(text)
    for pos, command in sorted(positions, reverse=True):
        i = _box_argument_start(text, pos, command)
        if i is None or i >= stop:
            continue
        if text[i] == "{":
            end = _match_braces(text, i, stop)
            if end is not None:
                return text[i + 1 : end].strip()
            stop = i
            continue
        # "\\boxed 5": the argument is the next run of characters other than spaces and "$".
        m = _BARE_ARGUMENT_RE.match(text, i)
        if m:
            return m.group(0).strip()
    return None


def _answer_is(text: str) -> str | None:
    """The rest of the line after the last "answer is" / "final answer" (an optional "is" and colon
    skipped). Parsed by hand after one simple regex pass, so the cost stays linear on any input."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    for m in reversed(matches):
        i = _skip_space(text, m.end())
        if text.startswith("is", i) and not text[i + 2 : i + 3].isalpha():
            i = _skip_space(text, i + 2)
        if i < len(text) and text[i] in ":：":
            i = _skip_space(text, i + 1)
        end = text.find("\n", i)
        line = text[i : len(text) if end == -1 else end]
        ans = line.strip().strip("*").strip().rstrip(".。").strip()
        if ans.startswith("$") and ans.endswith("$") and len(ans) > 1:
            ans = ans.strip("$").strip()
        if ans:
            return ans
        if line.strip():
            return None  # the line held only decoration ("**.")
    return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def extract_answer(response: str) -> tuple[str | None, bool]:
    """(answer, came_from_box). Text after ``</think>`` first, then the whole response."""
    if not response:
        return None, False
    candidates = []
    if "</think>" in response:
        candidates.append(response.rsplit("</think>", 1)[1])
    candidates.append(response)
    for text in candidates:
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed, True
        ans = _answer_is(text)
        if ans is not None:
            return ans, False
    return None, False


def _strip_delimiters(s: str) -> str:
    """Remove math delimiters and an outer box; math-verify gets the bare expression (it drops units)."""
    s = s.strip()
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    s = s.strip().strip("$").strip()
    inner = last_boxed(s) if s.startswith(_BOX_COMMANDS) else None
    return (inner if inner is not None else s).strip()


def _strip_wrappers(s: str) -> str:
    """Remove delimiters and formatting that never change a value (used for string comparisons)."""
    s = _strip_delimiters(s)
    for cmd in ("\\text", "\\textbf", "\\mathrm", "\\mathbf"):
        while True:
            m = re.search(re.escape(cmd) + r"\s*\{", s)
            if not m:
                break
            end = _match_braces(s, m.end() - 1)
            if end is None:
                break
            s = s[: m.start()] + s[m.end() : end] + s[end + 1 :]
    return s.strip()


def _normalize(s: str) -> str:
    s = _strip_wrappers(s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def choice_letter(s: str) -> str | None:
    """The option letter of a multiple-choice answer ("C", "(C)", "C) 42", "\\text{(C)}"), else None."""
    s = _strip_wrappers(s).replace("*", "").strip()
    m = _CHOICE_RE.match(s)
    return m.group(1) if m else None


def _gold_letter(gold: str) -> str | None:
    s = _strip_wrappers(gold).strip().strip("()").strip()
    return s if len(s) == 1 and s in _LETTERS else None


class GradingInterrupted(RuntimeError):
    """Raised by :func:`grade` after :func:`interrupt`: the verdict is unknown, so nothing may be recorded."""


class _VerifyWorker:
    """A long-lived helper process running math-verify, killed and restarted on a hard timeout.

    One per thread (see :func:`_worker`), so concurrent callers never queue behind each other's checks
    and every call is bounded on its own.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._ready = False  # the helper has said it is ready (imports done)
        self._started_once = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _spawn(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return subprocess.Popen(
            [sys.executable, "-m", "evaluation._verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
        )

    def _wait_ready(self, proc: subprocess.Popen[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if _INTERRUPTED.is_set():
                raise GradingInterrupted("grading was interrupted")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([proc.stdout], [], [], min(left, _POLL_S))
            if ready:
                return bool(proc.stdout.readline())

    def close(self) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _ensure(self, timeout_s: float) -> subprocess.Popen[str] | None:
        """The ready helper, or None when a restart is still under way after ``timeout_s``.

        The first start in a process may take STARTUP_TIMEOUT_S (importing SymPy on a cold machine). A
        restart after a kill is charged to the caller and bounded by ``timeout_s``; a helper still
        starting then is kept, so the next call picks it up instead of starting over.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None and self._ready:
            return proc
        if proc is None or proc.poll() is not None:
            self.close()
            proc = self._proc = self._spawn()
            self._ready = False
        limit = timeout_s if self._started_once else STARTUP_TIMEOUT_S
        try:
            ok = self._wait_ready(proc, limit)
        except BaseException:
            self.close()
            raise
        if ok:
            self._ready = self._started_once = True
            return proc
        if not self._started_once:
            self.close()
            raise RuntimeError("the math-verify helper process (evaluation._verify_worker) did not start")
        if proc.poll() is not None:
            self.close()  # it died while starting: the next call starts a new one
        return None

    def check(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or None when it did not answer within ``timeout_s`` (worker killed)."""
        with self._lock:
            proc = self._ensure(timeout_s)
            if proc is None:
                return None
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
                proc.stdin.flush()
                deadline = time.monotonic() + timeout_s
                line = ""
                while True:
                    if _INTERRUPTED.is_set():
                        raise GradingInterrupted("grading was interrupted")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ready, _, _ = select.select([proc.stdout], [], [], min(left, _POLL_S))
                    if ready:
                        line = proc.stdout.readline()
                        break
            except (BrokenPipeError, OSError):
                line = ""
            except BaseException:
                # Ctrl-C or an interrupt mid-check: the helper still owes an answer that the next check
                # would read as its own, so it is discarded with the process.
                self.close()
                raise
            if not line:
                self.close()
                return None
            try:
                return bool(json.loads(line)["ok"])
            except (ValueError, KeyError):
                self.close()
                return None


_INTERRUPTED = threading.Event()
_POLL_S = 0.2  # how often a waiting check looks at the interrupt flag
_LOCAL = threading.local()


def _worker() -> _VerifyWorker:
    worker = getattr(_LOCAL, "worker", None)
    if worker is None:
        worker = _LOCAL.worker = _VerifyWorker()
    return worker


def interrupt() -> None:
    """Make every running and future :func:`grade` call that needs math-verify raise
    :class:`GradingInterrupted` within ~0.2 s (used on Ctrl-C, so grading threads end at once)."""
    _INTERRUPTED.set()


def clear_interrupt() -> None:
    """Undo :func:`interrupt` (a new evaluation in the same process)."""
    _INTERRUPTED.clear()


def warm_up(timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Start this thread's math-verify helper now, so the first graded sample does not pay for it."""
    with _worker()._lock:
        _worker()._ensure(timeout_s)


def grade(response: str | None, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Extract the answer from ``response`` and compare it with ``ground_truth``.

    Returns within ``2 * timeout_s`` on any input (measured up to 1 MB; extraction is linear): at most
    ``timeout_s`` to restart a helper killed by an earlier timeout plus ``timeout_s`` for the check. The
    very first helper start of a thread is the exception (see :func:`warm_up`).
    """
    extracted, boxed = extract_answer(response or "")
    if extracted is None or ground_truth is None or not str(ground_truth).strip():
        return Grade(extracted, boxed, False)
    gold = str(ground_truth)
    if len(extracted) > MAX_ANSWER_CHARS:
        # Nothing worth parsing is this long; only an identical string counts (keeps every step bounded).
        return Grade(extracted, boxed, extracted.strip() == gold.strip())
    letter = _gold_letter(gold)
    if letter is not None:
        return Grade(extracted, boxed, choice_letter(extracted) == letter)
    if _normalize(extracted) == _normalize(gold):
        return Grade(extracted, boxed, True)
    verdict = _worker().check(_strip_delimiters(gold), _strip_delimiters(extracted), timeout_s)
    return Grade(extracted, boxed, bool(verdict))


def is_correct(response: str, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the response's final answer equals ``ground_truth``; False on timeout or no answer."""
    return grade(response, ground_truth, timeout_s).correct
