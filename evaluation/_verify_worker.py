"""The grader's helper process behind :mod:`evaluation.grader` (one JSON request per line on stdin).

It runs in its own process so that the parent can kill it when SymPy hangs in C code, where the
signal-based timeouts of math-verify (used here as a first line of defence) cannot interrupt it, and so
that a memory limit bounds it alone. Requests (``op``):

* ``math`` (also when ``op`` is absent): ``{"gold", "pred"}`` -> ``{"ok": bool}``, math-verify's verdict;
* ``ifeval_load``: import lm-eval's IFEval checkers offline -> ``{"ok": true}`` or ``{"error": why}``;
* ``ifeval``: ``{"spec", "response"}`` -> ``{"strict": [bool], "loose": [bool]}`` or ``{"error": why}``;
* ``ifeval_validate``: ``{"specs": [spec, ...]}`` -> ``{"problems": [[index, why], ...]}``.

A request that runs out of memory answers ``{"memory": true}`` (the parent then replaces the process).

Limits set here, at start-up: the address space (``PSFT_GRADER_MEMORY_MB``, from the parent), and on
Linux a parent-death signal, so a helper never outlives the process that uses it, even one killed with
SIGKILL (the parent also closes its stdin, which ends the loop below).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import signal
import sys

# Inner timeouts (seconds, math-verify's own signal alarms); the parent's hard limit is larger.
PARSE_TIMEOUT_S = 3
VERIFY_TIMEOUT_S = 3
MEMORY_ENV = "PSFT_GRADER_MEMORY_MB"
PARENT_ENV = "PSFT_GRADER_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _parse(expr: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    # math-verify's LaTeX extractor wants delimited math: "$...$" reads percentages and units that
    # "\boxed{...}" does not; the box is the fallback.
    parsed = parse(f"${expr}$", extraction_config=config, parsing_timeout=PARSE_TIMEOUT_S)
    if not parsed:
        parsed = parse(f"\\boxed{{{expr}}}", extraction_config=config, parsing_timeout=PARSE_TIMEOUT_S)
    return parsed


def equivalent(gold: str, pred: str) -> bool:
    """math-verify's verdict on two bare expressions; any failure but running out of memory is False."""
    from math_verify import verify

    try:
        gold_parsed = _parse(gold)
        pred_parsed = _parse(pred)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=VERIFY_TIMEOUT_S))
    except MemoryError:
        raise  # reported as such: the parent records it and replaces this process
    except BaseException:  # noqa: B036 - math-verify's TimeoutException is not an Exception subclass
        return False


def _limit_memory() -> None:
    mb = os.environ.get(MEMORY_ENV)
    if mb and int(mb) > 0:
        limit = int(mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent() -> None:
    """SIGKILL this process when the parent goes (Linux); elsewhere stdin's EOF ends it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    expected = os.environ.get(PARENT_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(0)  # the parent died before prctl took effect


def _ifeval(req: dict) -> dict:
    from evaluation import ifeval

    try:
        if req["op"] == "ifeval_load":
            ifeval.load_checkers()
            return {"ok": True}
        if req["op"] == "ifeval_validate":
            problems = []
            for i, raw in enumerate(req["specs"]):
                spec = ifeval.IFEvalSpec(tuple(raw["instruction_id_list"]), tuple(raw["kwargs"]))
                problems += [[i, why] for why in ifeval.spec_problems(spec)]
            return {"problems": problems}
        raw = req["spec"]
        spec = ifeval.IFEvalSpec(tuple(raw["instruction_id_list"]), tuple(raw["kwargs"]))
        verdict = ifeval.check(spec, str(req["response"]))
        return {"strict": list(verdict.strict), "loose": list(verdict.loose)}
    except MemoryError:
        raise
    except Exception as e:  # a checker failing on model text, or lm-eval missing: named, never a crash
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def handle(req: dict) -> dict:
    op = req.get("op", "math")
    if op == "math":
        return {"ok": equivalent(str(req["gold"]), str(req["pred"]))}
    if op in ("ifeval", "ifeval_load", "ifeval_validate"):
        return _ifeval(req)
    return {"error": f"unknown op {op!r}"}


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    _die_with_parent()
    logging.disable(logging.CRITICAL)
    # Pay for the imports (math-verify, and SymPy on its first parse) before the first request is timed: a
    # request's time limit is for the answer, not for a cold start.
    equivalent("1/2", "0.5")

    _limit_memory()  # after the imports: the limit bounds what a request adds
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()

    for line in sys.stdin:
        try:
            req = json.loads(line)
            reply = handle(req)
        except MemoryError:
            reply = {"memory": True}
        except (ValueError, KeyError, TypeError):
            reply = {"ok": False}
        try:
            text = json.dumps(reply) + "\n"
        except MemoryError:
            text = '{"memory": true}\n'
        sys.stdout.write(text)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
