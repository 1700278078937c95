"""The toy-world study: the --quick study end to end and its resume; the light loop against the real
trainer on one configuration (same losses); the learning-rate-vs-trust-region study at smoke size.
Default tier: the light loop against the trainer; slow: both --quick studies."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_quick(out, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "PSFT_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.study", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )


@pytest.mark.slow
def test_quick_study_runs_reports_and_resumes(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = run_quick(out, cache)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "pretrain step" in first.stdout and "8 fine-tuning runs to do" in first.stdout

    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(runs) == 8  # 2 methods x 2 learning rates x 2 seeds
    run = json.loads((out / "runs" / "psft_k4-lr0.003-seed0.json").read_text())
    updates = [point["update"] for point in run["curve"]]
    assert updates == [0, 6, 12]  # 32 demonstrations / 8 per update x 3 epochs, measured every 6
    for point in run["curve"]:
        assert 0.0 <= point["acc_id"] <= 1.0 and 0.0 <= point["acc_ood"] <= 1.0
        assert point["entropy_id"] > 0.0 and point["entropy_ood"] > 0.0
    # PSFT's trust region binds at this learning rate after the first update of a step.
    assert max(point["train_clip_frac"] for point in run["curve"][1:]) > 0.0
    sft = json.loads((out / "runs" / "sft-lr0.003-seed0.json").read_text())
    assert all(point["train_clip_frac"] == 0.0 for point in sft["curve"][1:])  # r == 1 without a snapshot

    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split("|")[1].strip() for row in rows] == ["sft", "sft", "psft_k4", "psft_k4"]
    assert "pretrained" in report.lower() and "±" in rows[0]
    for name in ("entropy.png", "tradeoff.png", "clip_fraction.png"):
        assert (out / name).stat().st_size > 5000

    again = run_quick(out, cache)  # the model is cached and every run is done: nothing is redone
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretrain step" not in again.stdout and "0 fine-tuning runs to do" in again.stdout
    assert (out / "report.md").read_text().count("| psft_k4 |") == 2


def test_light_loop_gives_the_trainers_losses(tmp_path):
    """Same model, rows, batch order and optimizer: PSFT k=4 per-step NLL, objective and clip
    fraction of the real trainer (Ray + FSDP worker) and of the study's loop agree."""
    from pipelines.study.equivalence import compare
    from pipelines.study.model import CharTokenizer, ModelSize, build_model

    tokenizer = CharTokenizer()
    model_dir = tmp_path / "model"
    build_model(ModelSize(hidden=64, layers=2, heads=2, intermediate=256), tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_hf(model_dir)
    result = compare(model_dir, tmp_path / "eq", k=4, steps=3, lr=1e-3)
    assert len(result["trainer"]) == len(result["loop"]) == 3
    assert max(step["clip_frac"] for step in result["trainer"]) > 0.0  # the trust region is exercised
    for trainer, loop in zip(result["trainer"], result["loop"], strict=True):
        for key in ("nll", "objective", "clip_frac"):
            assert loop[key] == pytest.approx(trainer[key], abs=2e-4, rel=1e-4), (key, trainer, loop)


@pytest.mark.slow
def test_quick_lr_study_runs_and_reports(tmp_path):
    """The learning-rate-vs-trust-region study at smoke size: 2 pretrained models x 2 seeds x 4 conditions,
    the report with its table, readings and figures; the never-refreshed snapshot clips, SFT never does."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "PSFT_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.study.lr_study", "--quick", "--out", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "16 fine-tuning runs to do" in done.stdout
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(runs) == 16 and "psft_never_lo-p1-s1.json" in runs
    sft = json.loads((out / "runs" / "sft_1x_hi-p0-s0.json").read_text())
    psft = json.loads((out / "runs" / "psft_k8_lo-p0-s0.json").read_text())
    assert sft["config"]["mini_batch"] == 8 * psft["config"]["mini_batch"]  # 1 update per step against 8
    assert psft["lr"] == pytest.approx(sft["lr"] / 20)
    never = json.loads((out / "runs" / "psft_never_lo-p0-s0.json").read_text())
    assert max(p["train_clip_frac"] for p in never["curve"][1:]) > 0.0
    assert all(p["train_clip_frac"] == 0.0 for p in sft["curve"][1:])
    report = (out / "lr_vs_trust_region.md").read_text()
    assert "| psft_k8_lo | 5e-05 |" in report and "(b " in report and "Rule:" in report
    assert "where does the gap come from?" in report
    for name in ("outcomes", "entropy", "ood", "clip"):
        assert (out / f"lr_vs_trust_region_{name}.png").stat().st_size > 5000
