"""The clipped-token log: which demonstration tokens PSFT's clip stops, one JSON line per training step.

Beside the file log ``<name>.jsonl`` (verl's FileLogger path) the trainer writes ``<name>.clipped_tokens.jsonl``
when ``psft.clipped_token_log`` is true, ``psft.loss_mode=psft`` and ``trainer.logger`` has ``file``. A
line per PSFT step (SFT warm-up steps have no ratio and no line)::

    {"step": 12,
     "tokens": 4096,          # demonstration tokens over the step's updates (the batch's, x psft.epochs)
     "clipped": 37,           # of those, r > 1 + clip_ratio_high: the clip binds, no gradient (A = +1)
     "ratio_bin_edges": [0.0, 0.5, 0.8, ..., 2.0, "inf"],
     "ratio_histogram": [...],  # counts of r = pi / pi_old per bin (e[i], e[i + 1]], the first [0, e[1]]
     "top_clipped": [{"token": " wait", "id": 3456, "count": 9, "mean_ratio": 1.41}, ...]}

``top_clipped``: the 20 most often clipped token ids of the step (by count, ties by id), decoded one id
at a time by the run's tokenizer, with the mean r of their clipped occurrences. The counts come from
every update's training forward (k x epochs of them): the first update of a step sees r == 1 exactly.
Bin edges: ``token_metrics.RATIO_BIN_EDGES`` plus 1 - clip_ratio_low and 1 + clip_ratio_high, fixed for
a run; the bins above 1 + clip_ratio_high sum to ``clipped``. Non-finite numbers are written as strings
("inf", "nan"): the file is strict JSON. A resumed run keeps the lines up to its resumed step, as the
file log does. ``scripts/plot_runs.py`` draws the histogram over steps and prints the top tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the reader (scripts/plot_runs.py) needs neither torch nor verl
    from .step_metrics import ClippedTokenStats

TOP_CLIPPED = 20
SUFFIX = ".clipped_tokens.jsonl"
LINE_KEYS = ("step", "tokens", "clipped", "ratio_bin_edges", "ratio_histogram", "top_clipped")


def clipped_token_log_path(file_log: str | Path) -> Path:
    """``<file log without .jsonl>.clipped_tokens.jsonl``."""
    file_log = Path(file_log)
    stem = file_log.name.removesuffix(".jsonl")
    return file_log.with_name(stem + SUFFIX)


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def log_line(step: int, stats: ClippedTokenStats, edges: list[float], decode: Callable[[int], str]) -> dict:
    """The line of one step (see the module's docstring)."""
    if len(stats.histogram) != len(edges) - 1:
        raise ValueError(f"{len(stats.histogram)} ratio histogram counts for {len(edges)} bin edges")
    return {
        "step": step,
        "tokens": stats.tokens,
        "clipped": stats.clipped,
        "ratio_bin_edges": [_number(e) for e in edges],
        "ratio_histogram": stats.histogram,
        "top_clipped": [
            {"token": decode(token), "id": token, "count": count, "mean_ratio": _number(mean)}
            for token, count, mean in stats.top(TOP_CLIPPED)
        ],
    }


class ClippedTokenLog:
    """Appends a step's line to ``path``; on open keeps the lines up to ``resume_step`` (none on a fresh run)."""

    def __init__(self, path: str | Path, edges: list[float], tokenizer: Any, resume_step: int = 0):
        self.path, self.edges, self.tokenizer = Path(path), edges, tokenizer
        kept = [e for e in read_clipped_token_log(self.path) if e["step"] <= resume_step] if resume_step else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as out:
            out.writelines(json.dumps(entry) + "\n" for entry in kept)

    def write(self, step: int, stats: ClippedTokenStats) -> None:
        """The step's line; nothing for a step whose loss produced no analytics (SFT warm-up, knob off)."""
        if not stats.histogram:
            return
        line = log_line(step, stats, self.edges, lambda token: self.tokenizer.decode([token]))
        with open(self.path, "a") as out:
            out.write(json.dumps(line) + "\n")


def open_clipped_token_log(config: Any, resume_step: int, tokenizer: Any) -> ClippedTokenLog | None:
    """The run's clipped-token log, or None where it writes none (knob off, not PSFT, no file log)."""
    from .token_metrics import ratio_bin_edges
    from .verl_adapters.tracking import file_log_path

    psft = config.psft
    if not psft.get("clipped_token_log", True) or psft.loss_mode != "psft" or "file" not in config.trainer.logger:
        return None
    edges = ratio_bin_edges(float(psft.clip_ratio_low), float(psft.clip_ratio_high))
    return ClippedTokenLog(clipped_token_log_path(file_log_path(config)), edges, tokenizer, resume_step)


def read_clipped_token_log(path: str | Path) -> list[dict]:
    """The lines of a clipped-token log, later lines for the same step winning (a resumed run), in step
    order; edges and ratios as floats. A bad line stops with the file, line and what is wrong."""
    path = Path(path)
    if not path.exists():
        return []
    by_step: dict[int, dict] = {}
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
            missing = [key for key in LINE_KEYS if key not in entry]
            if missing:
                raise ValueError(f"missing keys {missing}")
            entry["ratio_bin_edges"] = [float(e) for e in entry["ratio_bin_edges"]]
            if len(entry["ratio_histogram"]) != len(entry["ratio_bin_edges"]) - 1:
                raise ValueError(
                    f"{len(entry['ratio_histogram'])} histogram counts for {len(entry['ratio_bin_edges'])} bin edges"
                )
            for token in entry["top_clipped"]:
                token["mean_ratio"] = float(token["mean_ratio"])
            by_step[int(entry["step"])] = entry
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: not a clipped-token log line ({exc})") from exc
    return [by_step[step] for step in sorted(by_step)]
