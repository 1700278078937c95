"""The quickstart pipeline, small: tiny model, a few steps, real training, real vLLM, report, figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

# About 3 minutes on 2 idle cores (2 trainer runs, 3 vLLM evaluations), then a rerun that redoes nothing.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def run_quickstart(out, cache, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.quickstart", "--smoke", "--out", str(out), "--cache", str(cache)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quickstart_smoke_runs_end_to_end_and_resumes(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = run_quickstart(out, cache, timeout=1200)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split("|")[1].strip() for row in rows] == ["Base", "SFT", "PSFT"]
    assert "→" in rows[1] and "→" in rows[2]  # entropy start → end for both trained models
    for name in ("entropy.png", "loss.png", "clip_fraction.png", "accuracy.png"):
        assert (out / "figures" / name).stat().st_size > 5000
    for model in ("base", "sft", "psft"):
        assert (out / "eval" / model / "summary.json").is_file()
    assert "| PSFT |" in first.stdout  # the table is printed at the end

    again = run_quickstart(out, cache, timeout=300)  # every stage's output exists: nothing is redone
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already trained") == 2
    assert "main_psft" not in again.stdout and "evaluation.eval" not in again.stdout
