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
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 120.0
# Longer extracted answers are compared as strings only: nothing a grader should parse is this long.
MAX_ANSWER_CHARS = 2000

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS_RE = re.compile(r"(?:final\s+answer|answer\s+is)\s*(?:is)?\s*[:：]?\s*(?P<ans>[^\n]+)", re.IGNORECASE)
_CHOICE_RE = re.compile(r"^\(?([A-J])\)?(?:[.:)]|\s|$)")
_LETTERS = frozenset("ABCDEFGHIJ")


@dataclass(frozen=True)
class Grade:
    """What the grader saw: the extracted answer (None when nothing was found), whether it came from a
    ``\\boxed{}``, and the verdict."""

    extracted: str | None
    boxed: bool
    correct: bool


def _match_braces(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; escaped braces (``\\{``) do not count."""
    depth = 0
    i = open_idx
    n = len(text)
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


def _boxed_at(text: str, start: int, command: str) -> str | None:
    """Content of the box command starting at ``start``, or None when it is incomplete."""
    i = start + len(command)
    if i < len(text) and (text[i].isalpha()):
        return None  # e.g. \boxedsomething: another command
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] == "{":
        end = _match_braces(text, i)
        return None if end is None else text[i + 1 : end]
    # "\boxed 5": the argument is the next run of non-space characters.
    m = re.match(r"[^\s$]+", text[i:])
    return m.group(0) if m else None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}``/``\\fbox{...}`` in ``text``, or None.

    An unterminated last box (a response cut by the token limit) is skipped, so an earlier complete
    box can still count.
    """
    positions = []
    for command in _BOX_COMMANDS:
        pos = text.find(command)
        while pos != -1:
            positions.append((pos, command))
            pos = text.find(command, pos + 1)
    for pos, command in sorted(positions, reverse=True):
        content = _boxed_at(text, pos, command)
        if content is not None:
            return content.strip()
    return None


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    ans = matches[-1].group("ans").strip()
    ans = ans.strip("*").strip()
    ans = re.sub(r"[.。]+$", "", ans).strip()
    if ans.startswith("$") and ans.endswith("$") and len(ans) > 1:
        ans = ans.strip("$").strip()
    return ans or None


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


class _VerifyWorker:
    """A long-lived helper process running math-verify, killed and restarted on a hard timeout."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "evaluation._verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
        )
        # Start-up (importing SymPy) is not charged to the first check's timeout.
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT_S)
        if not ready or not proc.stdout.readline():
            proc.kill()
            proc.wait()
            raise RuntimeError("the math-verify helper process (evaluation._verify_worker) did not start")
        return proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def check(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or None when it did not answer within ``timeout_s`` (worker killed)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
                line = proc.stdout.readline() if ready else ""
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                self.close()
                return None
            try:
                return bool(json.loads(line)["ok"])
            except (ValueError, KeyError):
                self.close()
                return None


_WORKER = _VerifyWorker()


def grade(response: str | None, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Extract the answer from ``response`` and compare it with ``ground_truth``."""
    extracted, boxed = extract_answer(response or "")
    if extracted is None or ground_truth is None or not str(ground_truth).strip():
        return Grade(extracted, boxed, False)
    gold = str(ground_truth)
    letter = _gold_letter(gold)
    if letter is not None:
        return Grade(extracted, boxed, choice_letter(extracted) == letter)
    if _normalize(extracted) == _normalize(gold):
        return Grade(extracted, boxed, True)
    if len(extracted) > MAX_ANSWER_CHARS:
        return Grade(extracted, boxed, False)
    verdict = _WORKER.check(_strip_delimiters(gold), _strip_delimiters(extracted), timeout_s)
    return Grade(extracted, boxed, bool(verdict))


def is_correct(response: str, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the response's final answer equals ``ground_truth``; False on timeout or no answer."""
    return grade(response, ground_truth, timeout_s).correct
