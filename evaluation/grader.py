"""Grade a model response against a reference answer.

Extraction is done here, by hand, so that what counts as "the answer" is explicit and testable:

1. text after the last ``</think>`` is searched first (a reasoning model's final answer lives there);
   when it holds no answer, the whole response is searched;
2. the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) wins, nested and escaped braces handled;
3. otherwise the last "The answer is: X" / "Final answer: X".

Equivalence goes through math-verify, with both sides wrapped as ``$...$`` (math-verify's LaTeX
extractor expects delimited math; the original built ``\\boxed{$x}$``, which it cannot read).
Multiple-choice golds (a single letter A-Z: TruthfulQA's mc1 has up to 13 options) are compared as letters
without SymPy.

A ground truth written by :func:`evaluation.ifeval.ifeval_ground_truth` (``{"grader":"ifeval",...}``)
is graded by IFEval's instruction checkers instead (lm-eval's, offline): correct means every instruction
followed, strictly; per-instruction strict and loose verdicts come with it.

Model text is never evaluated as Python. Every math-verify call and every IFEval check runs in a helper
process (:mod:`evaluation._verify_worker`) with a hard wall-clock limit and a memory limit: SymPy can
hang inside C code where a signal-based timeout never fires, so the helper is killed. A check that hits
a limit is graded incorrect and says so (``Grade.failure``: "timeout", "memory", "crashed"), so a
summary lists it apart instead of passing it off as a wrong answer. Helpers form one bounded pool per
process (:class:`_Pool`).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import _verify_worker
from evaluation.ifeval import IFEvalSpec, IFEvalUnavailable, IFEvalVerdict, parse_ground_truth
from recipe.psft.rows import DataError, listing

# Bump whenever a change can turn a verdict: results graded by another version are not mixed.
GRADER_VERSION = "2"
DEFAULT_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 120.0
# Longer extracted answers are compared as strings only: nothing a grader should parse is this long.
MAX_ANSWER_CHARS = 2000
# The helper pool: at most this many processes per process, each with this address-space limit (MiB;
# a helper after its imports takes about 250 MiB of address space).
HELPERS_ENV = "PSFT_GRADER_HELPERS"
MEMORY_ENV = _verify_worker.MEMORY_ENV
DEFAULT_MAX_HELPERS = max(2, min(8, os.cpu_count() or 2))
DEFAULT_MEMORY_MB = 2048
# Grade.failure values: why a check has no verdict (the sample is counted incorrect and listed apart).
FAILURES = ("timeout", "memory", "crashed", "error")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS_RE = re.compile(r"final\s+answer|answer\s+is", re.IGNORECASE)
_BARE_ARGUMENT_RE = re.compile(r"[^\s$]+")
_CHOICE_RE = re.compile(r"^\(?([A-Z])\)?(?:[.:)]|\s|$)")
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Grade:
    """What the grader saw: the extracted answer (None when nothing was found, and for IFEval), whether it
    came from a ``\\boxed{}``, and the verdict. ``failure`` says why a check gave no verdict (one of
    FAILURES; ``correct`` is then False), ``detail`` what the checker said; ``ifeval`` holds IFEval's
    per-instruction verdicts."""

    extracted: str | None
    boxed: bool
    correct: bool
    failure: str | None = None
    ifeval: IFEvalVerdict | None = None
    detail: str | None = None

    @property
    def timed_out(self) -> bool:
        return self.failure == "timeout"


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


# ------------------------------------------------------------------------------ the helper processes


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r}: expected a whole number") from None


class _Spawner:
    """Starts every helper process from one long-lived thread.

    Linux's parent-death signal (set by the helper, :mod:`evaluation._verify_worker`) fires when the
    *thread* that forked the helper ends, not the process: a helper forked by a short-lived grading thread
    would be killed under the pool's feet. Forking from this thread, which lives as long as the process,
    makes the signal mean "the process is gone".
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Future, list[str], dict[str, str]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="grader-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, argv, env = item
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    bufsize=1,
                    env=env,
                )
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)
            else:
                future.set_result(proc)

    def spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        future: Future = Future()
        self._queue.put((future, argv, env))
        return future.result()


class _Helper:
    """One helper process: started, read for readiness, asked one request at a time, killed.

    ``replacement``: started in place of a helper that failed, so its start is charged to the caller's
    time limit (see :func:`_ask`); a helper that grows the pool gets STARTUP_TIMEOUT_S.
    """

    def __init__(self, proc: subprocess.Popen[str], replacement: bool = False) -> None:
        self.proc = proc
        self.replacement = replacement
        self.ready = False  # it has said it is ready (imports done)
        self.ifeval_loaded = False
        self.load_pending = False  # an ifeval_load request was sent and its answer not yet read

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def _read_line(self, deadline: float) -> str | None:
        """The next line the helper writes, "" when it ended, None when ``deadline`` passed first."""
        assert self.proc.stdout is not None
        while True:
            if _INTERRUPTED.is_set():
                raise GradingInterrupted("grading was interrupted")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, _POLL_S))
            if ready:
                return self.proc.stdout.readline()

    def wait_ready(self, deadline: float) -> bool:
        if not self.ready:
            line = self._read_line(deadline)
            self.ready = bool(line)
        return self.ready

    def send(self, req: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def reply(self, deadline: float) -> dict[str, Any] | None:
        """The answer to the request sent last, or None when none came before ``deadline`` or it ended."""
        line = self._read_line(deadline)
        if not line:
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def request(self, req: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        return self.reply(deadline) if self.send(req) else None

    def start_ifeval_load(self) -> None:
        """Ask for the IFEval checkers without waiting (the helper loads them while nobody needs it)."""
        if not self.ifeval_loaded and not self.load_pending:
            self.load_pending = self.send({"op": "ifeval_load"})

    def ifeval_ready(self, deadline: float) -> dict[str, Any] | None:
        """``{"ok": true}`` once the checkers are loaded, ``{"error": why}`` when they cannot be, None when
        the answer did not come before ``deadline`` (still pending while the helper lives)."""
        if self.ifeval_loaded:
            return {"ok": True}
        self.start_ifeval_load()
        if not self.load_pending:
            return None
        reply = self.reply(deadline)
        if reply is None:
            return None
        self.load_pending = False
        self.ifeval_loaded = "error" not in reply
        return reply


class _Pool:
    """At most ``max_helpers`` helper processes per process, shared by every thread.

    A caller checks a helper out for one request and hands it back; callers beyond the bound wait for one
    (the wait is not part of the time limit: it is not the sample's fault). A helper that timed out, ran
    out of memory or died is killed and a replacement starts at once, so the next caller finds it
    (nearly) ready. Helpers belong to no thread: a thread that ends leaves none behind, and one stopped
    mid-request (Ctrl-C, :func:`interrupt`) kills the helper it held, whose late answer would otherwise be
    read as the next request's. All are killed at exit, and each dies with the process even on SIGKILL.
    """

    def __init__(self, max_helpers: int, memory_mb: int) -> None:
        self.max_helpers = max_helpers
        self.memory_mb = memory_mb
        self._cond = threading.Condition()
        self._idle: list[_Helper] = []
        self._all: set[object] = set()  # helpers, and slots held for ones being started
        self._spawner: _Spawner | None = None
        self.ever_ready = False  # a helper became ready once: failed ones are replaced at once from then on

    def _spawn(self, replacement: bool = False) -> _Helper:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[_verify_worker.MEMORY_ENV] = str(self.memory_mb)
        env[_verify_worker.PARENT_ENV] = str(os.getpid())
        if self._spawner is None:
            self._spawner = _Spawner()
        helper = _Helper(self._spawner.spawn([sys.executable, "-m", "evaluation._verify_worker"], env), replacement)
        with self._cond:
            self._all.add(helper)
        return helper

    def acquire(self) -> _Helper:
        with self._cond:
            while True:
                if _INTERRUPTED.is_set():
                    raise GradingInterrupted("grading was interrupted")
                while self._idle:
                    helper = self._idle.pop()
                    if helper.alive():
                        return helper
                    self._all.discard(helper)
                    helper.kill()
                if len(self._all) < self.max_helpers:
                    break
                self._cond.wait(_POLL_S)
            slot = object()  # holds the place while the process starts
            self._all.add(slot)
        try:
            return self._spawn()
        finally:
            with self._cond:
                self._all.discard(slot)
                self._cond.notify()

    def release(self, helper: _Helper, healthy: bool) -> None:
        """Hand ``helper`` back; an unhealthy one is killed and, once helpers have started before,
        replaced at once (in the same slot, so the bound holds)."""
        if healthy and helper.alive():
            with self._cond:
                self._idle.append(helper)
                self._cond.notify()
            return
        slot = object()
        with self._cond:
            self._all.discard(helper)
            respawn = self.ever_ready and not _INTERRUPTED.is_set()
            if respawn:
                self._all.add(slot)
            self._cond.notify()
        helper.kill()
        if not respawn:
            return
        replacement = None
        try:
            replacement = self._spawn(replacement=True)
            if helper.ifeval_loaded or helper.load_pending:
                replacement.start_ifeval_load()  # read after the ready line, by whoever uses it next
        except OSError:
            pass
        finally:
            with self._cond:
                self._all.discard(slot)
                if replacement is not None:
                    self._idle.append(replacement)
                self._cond.notify()

    def live(self) -> list[_Helper]:
        with self._cond:
            return [h for h in self._all if isinstance(h, _Helper)]

    def close(self) -> None:
        """Kill every helper (at exit, or to apply new settings)."""
        with self._cond:
            helpers = [h for h in self._all if isinstance(h, _Helper)]
            self._all.clear()
            self._idle.clear()
        for helper in helpers:
            helper.kill()


_INTERRUPTED = threading.Event()
_POLL_S = 0.2  # how often a waiting check looks at the interrupt flag
_POOL_LOCK = threading.Lock()
_POOL: _Pool | None = None


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(max(1, _env_int(HELPERS_ENV, DEFAULT_MAX_HELPERS)), _env_int(MEMORY_ENV, DEFAULT_MEMORY_MB))
        return _POOL


def configure(max_helpers: int | None = None, memory_mb: int | None = None) -> None:
    """Set the pool's bound and each helper's memory limit (MiB, 0 = none); running helpers are replaced.
    Defaults: ``$PSFT_GRADER_HELPERS`` / ``$PSFT_GRADER_MEMORY_MB``, else DEFAULT_MAX_HELPERS /
    DEFAULT_MEMORY_MB."""
    global _POOL
    with _POOL_LOCK:
        old, _POOL = _POOL, None
        if old is not None:
            old.close()
        _POOL = _Pool(
            max(1, max_helpers if max_helpers is not None else _env_int(HELPERS_ENV, DEFAULT_MAX_HELPERS)),
            memory_mb if memory_mb is not None else _env_int(MEMORY_ENV, DEFAULT_MEMORY_MB),
        )


def helper_pids() -> list[int]:
    """The process ids of this process's grader helpers (for tests and diagnostics)."""
    pool = _POOL
    return sorted(h.proc.pid for h in pool.live() if h.alive()) if pool is not None else []


def _close_pool() -> None:
    pool = _POOL
    if pool is not None:
        pool.close()


def _forget_pool_in_child() -> None:
    # A forked child must not talk to (or kill) its parent's helpers; it starts its own when it grades.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


atexit.register(_close_pool)
os.register_at_fork(after_in_child=_forget_pool_in_child)


def _start(helper: _Helper, pool: _Pool, timeout_s: float, ifeval: bool) -> str | None:
    """Make ``helper`` ready (with the IFEval checkers when ``ifeval``): None when it is, else why not
    ("timeout", "crashed"). A replacement for a failed helper has ``timeout_s``, any other STARTUP_TIMEOUT_S
    (importing SymPy on a cold machine), past which it raises: the environment is broken."""
    deadline = time.monotonic() + (timeout_s if helper.replacement else STARTUP_TIMEOUT_S)
    if not helper.wait_ready(deadline):
        if not helper.replacement:
            code = helper.proc.poll()
            why = f"exited with status {code}" if code is not None else f"not ready after {STARTUP_TIMEOUT_S:.0f} s"
            raise RuntimeError(
                f"the grader's helper process (python -m evaluation._verify_worker) did not start: {why}"
            )
        return "timeout" if helper.alive() else "crashed"
    pool.ever_ready = True
    if helper.load_pending and not ifeval:
        # A replacement for an IFEval helper was asked to load the checkers: that answer comes first, and
        # read as this request's it would shift every later answer by one request.
        if helper.ifeval_ready(deadline) is None:
            return "timeout" if helper.alive() else "crashed"
    if ifeval:
        reply = helper.ifeval_ready(deadline)
        if reply is None:
            if not helper.replacement and helper.alive():
                raise IFEvalUnavailable(f"lm-eval's IFEval checkers did not load within {STARTUP_TIMEOUT_S:.0f} s")
            return "timeout" if helper.alive() else "crashed"
        if "error" in reply:
            raise IFEvalUnavailable(reply["error"])
    helper.replacement = False  # started: an ordinary helper from now on
    return None


def _ask(req: dict[str, Any], timeout_s: float, ifeval: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """(reply, None), or (None, why no reply: "timeout", "memory" or "crashed").

    A helper that replaces one killed by a failure must start (and load the IFEval checkers) within
    ``timeout_s``; the request has ``timeout_s`` more. A replacement still starting when its time is up
    stays in the pool for the next caller.
    """
    pool = _pool()
    helper = pool.acquire()
    healthy = False
    try:
        try:
            failure = _start(helper, pool, timeout_s, ifeval)
        except IFEvalUnavailable:
            healthy = helper.alive()
            raise
        if failure is not None:
            healthy = helper.alive()  # still starting (or loading): kept for the next caller
            return None, failure
        reply = helper.request(req, time.monotonic() + timeout_s)
        if reply is None:
            return None, "timeout" if helper.alive() else "crashed"
        if reply.get("memory"):
            return None, "memory"
        healthy = True
        return reply, None
    finally:
        # Any other way out (Ctrl-C, interrupt()) leaves a request unanswered: the helper goes with it.
        pool.release(helper, healthy)


def interrupt() -> None:
    """Make every running and future :func:`grade` call that needs a helper raise
    :class:`GradingInterrupted` within ~0.2 s (used on Ctrl-C, so grading threads end at once)."""
    _INTERRUPTED.set()


def clear_interrupt() -> None:
    """Undo :func:`interrupt` (a new evaluation in the same process)."""
    _INTERRUPTED.clear()


def warm_up(timeout_s: float = STARTUP_TIMEOUT_S, ifeval: bool = False) -> None:
    """Start a helper now (with the IFEval checkers loaded when ``ifeval``), so the first graded sample
    does not pay for it. Raises when it does not start within STARTUP_TIMEOUT_S."""
    pool = _pool()
    helper = pool.acquire()
    healthy = False
    try:
        failure = _start(helper, pool, timeout_s, ifeval)
        if failure is not None:
            raise RuntimeError(f"the grader's helper process did not start ({failure})")
        healthy = True
    finally:
        pool.release(helper, healthy)


# ----------------------------------------------------------------------------------------- grading


def _grade_ifeval(response: str, spec: IFEvalSpec, timeout_s: float) -> Grade:
    text = response or ""
    if not text.strip():
        # lm-eval's rule: an empty response follows nothing (no helper needed to say so).
        none = tuple(False for _ in spec.instruction_id_list)
        return Grade(None, False, False, ifeval=IFEvalVerdict(none, none))
    reply, failure = _ask({"op": "ifeval", "spec": spec.as_json(), "response": text}, timeout_s, ifeval=True)
    if failure is not None:
        return Grade(None, False, False, failure=failure)
    assert reply is not None
    if "error" in reply:
        return Grade(None, False, False, failure="error", detail=str(reply["error"]))
    verdict = IFEvalVerdict(tuple(bool(x) for x in reply["strict"]), tuple(bool(x) for x in reply["loose"]))
    return Grade(None, False, verdict.strict_all, ifeval=verdict)


def grade(response: str | None, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Grade ``response`` against ``ground_truth``: an IFEval spec (:mod:`evaluation.ifeval`), else the
    answer is extracted and compared.

    Returns within ``2 * timeout_s`` once it has a helper (measured up to 1 MB; extraction is linear): at
    most ``timeout_s`` for the replacement of a helper killed by an earlier failure to start, plus
    ``timeout_s`` for the check. The exceptions: a helper that grows the pool may take STARTUP_TIMEOUT_S
    to start (see :func:`warm_up`), and callers beyond the pool's bound wait for a free helper first. A
    check that hits a limit is graded incorrect with ``failure`` saying which. Raises DataError for a
    malformed IFEval ground truth, IFEvalUnavailable when IFEval's checkers are not installed.
    """
    spec = parse_ground_truth(ground_truth)
    if spec is not None:
        return _grade_ifeval(response or "", spec, timeout_s)
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
    reply, failure = _ask(
        {"op": "math", "gold": _strip_delimiters(gold), "pred": _strip_delimiters(extracted)}, timeout_s
    )
    return Grade(extracted, boxed, bool(reply and reply.get("ok")), failure=failure)


def is_correct(response: str, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the response is graded correct; False on a wrong answer, no answer or a grading limit."""
    return grade(response, ground_truth, timeout_s).correct


def grade_fields(response: str | None, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The grading columns of a ``samples.jsonl`` row (see evaluation/README.md, "Outputs")."""
    g = grade(response, ground_truth, timeout_s)
    row: dict[str, Any] = {
        "extracted_answer": g.extracted,
        "boxed": g.boxed,
        "correct": g.correct,
        "grading_failure": g.failure,
    }
    if g.detail is not None:
        row["grading_detail"] = g.detail
    if g.ifeval is not None:
        row["ifeval"] = {
            "strict": list(g.ifeval.strict),
            "loose": list(g.ifeval.loose),
            "loose_correct": g.ifeval.loose_all,
        }
    return row


def validate_ground_truths(items: Sequence[tuple[str, str]], timeout_s: float = STARTUP_TIMEOUT_S) -> int:
    """Check every IFEval ground truth among ``(where, ground_truth)`` pairs before anything is generated:
    its layout here, its instruction ids and argument names against lm-eval's registry in a helper.
    Raises DataError listing each bad one with its ``where``, IFEvalUnavailable when IFEval rows are
    present but the checkers are not installed. Returns how many IFEval ground truths there were."""
    specs: list[tuple[str, IFEvalSpec]] = []
    bad: list[str] = []
    seen: set[str] = set()
    for where, gt in items:
        if gt in seen:
            continue  # the same ground truth repeated (n samples, repeated rows) is checked once
        seen.add(gt)
        try:
            spec = parse_ground_truth(gt)
        except DataError as e:
            bad.append(f"{where}: {e}")
            continue
        if spec is not None:
            specs.append((where, spec))
    if specs and not bad:
        reply, failure = _ask(
            {"op": "ifeval_validate", "specs": [s.as_json() for _, s in specs]}, timeout_s, ifeval=True
        )
        if reply is None or "problems" not in reply:
            raise IFEvalUnavailable(f"IFEval ground truths could not be checked ({failure or reply})")
        bad += [f"{specs[i][0]}: {why}" for i, why in reply["problems"]]
    if bad:
        raise DataError(listing(f"{len(bad)} IFEval ground truth(s) cannot be graded", bad))
    return len(specs)
