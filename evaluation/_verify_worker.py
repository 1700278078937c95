"""The math-verify helper process behind :mod:`evaluation.grader` (one JSON request per line on stdin).

It runs in its own process so that the parent can kill it when SymPy hangs in C code, where the
signal-based timeouts of math-verify (used here as a first line of defence) cannot interrupt it.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

# Inner timeouts (seconds, math-verify's own signal alarms); the parent's hard limit is larger.
PARSE_TIMEOUT_S = 3
VERIFY_TIMEOUT_S = 3


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
    """math-verify's verdict on two bare expressions; any failure is False."""
    from math_verify import verify

    try:
        gold_parsed = _parse(gold)
        pred_parsed = _parse(pred)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=VERIFY_TIMEOUT_S))
    except BaseException:  # noqa: B036 - math-verify's TimeoutException is not an Exception subclass
        return False


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    logging.disable(logging.CRITICAL)
    import math_verify  # noqa: F401 - pay the import before the first request is timed

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()

    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = equivalent(str(req["gold"]), str(req["pred"]))
        except (ValueError, KeyError, TypeError):
            ok = False
        sys.stdout.write(json.dumps({"ok": ok}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
