"""Accuracy over training without an engine: checkpoint discovery, the per-step accuracy log, its plot,
names from checkpoint paths, the fingerprint cache and the paper-style table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evaluation import over_training as steps
from evaluation import paper_table as report
from evaluation.identity import CACHE_NAME, model_fingerprint, model_label
from prepare import hub


def summary(n: int, avg: float, se: float, complete: bool = True, sources: dict | None = None) -> dict:
    section = {"problems": 4, f"avg@{n}": avg, f"avg@{n}_stderr": se}
    return {
        "n": n,
        "complete": complete,
        "overall": section,
        "by_data_source": {
            k: {"problems": 2, f"avg@{n}": v, f"avg@{n}_stderr": 0.1} for k, v in (sources or {}).items()
        },
    }


def checkpoint(root: Path, step: int) -> Path:
    hf = root / f"global_step_{step}" / "huggingface"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(bytes([step]) * 16)
    return hf


@pytest.mark.parametrize(
    "path,label",
    [
        ("/runs/ckpt/psft/global_step_40/huggingface", "psft/global_step_40"),
        ("/runs/ckpt/psft/global_step_40/huggingface/", "psft/global_step_40"),
        ("/runs/ckpt/psft/global_step_40", "psft/global_step_40"),
        ("/models/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct"),
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ],
)
def test_model_label(path: str, label: str) -> None:
    assert model_label(path) == label


def bump_mtime(path: Path) -> None:
    """A rewrite within one coarse timestamp tick (kernels without multigrain timestamps) can keep the
    mtime; the cache is keyed by (size, mtime_ns), so move the mtime on by a second, as a later save would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_fingerprint_is_cached_and_follows_the_weights(tmp_path: Path) -> None:
    hf = checkpoint(tmp_path, 1)
    first = model_fingerprint(hf)
    assert (hf / CACHE_NAME).is_file() and first == model_fingerprint(hf)
    cache = json.loads((hf / CACHE_NAME).read_text())
    assert set(cache["files"]) == {"config.json", "model.safetensors"}
    (hf / "model.safetensors").write_bytes(b"\x07" * 16)  # same size, new content
    bump_mtime(hf / "model.safetensors")
    assert model_fingerprint(hf)["weights_sha256"] != first["weights_sha256"]
    (hf / "config.json").write_text('{"x": 1}')
    bump_mtime(hf / "config.json")
    assert model_fingerprint(hf)["tokenizer_sha256"] != first["tokenizer_sha256"]
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_fingerprint(tmp_path)


def test_ready_checkpoints_follow_the_resume_rule(tmp_path: Path) -> None:
    """The rule of recipe.psft.checkpoints: complete by manifest; folders without one only up to the
    tracker, and only while no checkpoint is complete."""
    from recipe.psft.checkpoints import TRACKER, write_manifest

    for step in (2, 4, 6):
        checkpoint(tmp_path, step)
    (tmp_path / "global_step_8" / "huggingface").mkdir(parents=True)  # being written: no weights yet
    assert list(steps.ready_checkpoints(tmp_path)) == []  # no manifest, no tracker: none known finished
    (tmp_path / TRACKER).write_text("4")  # step 6 is still being saved
    assert list(steps.ready_checkpoints(tmp_path)) == [2, 4]
    write_manifest(tmp_path / "global_step_6", 6, {})  # sealed by training: complete
    assert list(steps.ready_checkpoints(tmp_path)) == [6]
    (tmp_path / "global_step_6" / "huggingface" / "model.safetensors").write_bytes(b"")  # damaged after the seal
    assert 6 not in steps.ready_checkpoints(tmp_path)


def test_accuracy_log_from_complete_summaries(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Finished checkpoints are not evaluated again; the log holds complete steps only, in step order."""
    ckpt = tmp_path / "ckpt"
    for step in (10, 20, 30):
        checkpoint(ckpt, step)
    test_file = tmp_path / "test_toy.jsonl"
    test_file.write_text("{}\n")
    out_root = ckpt / "eval" / "test_toy"
    for step, avg in ((10, 0.25), (20, 0.5)):
        path = out_root / f"global_step_{step}" / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(summary(4, avg, 0.1, sources={"toy": avg})))
    path = out_root / "global_step_30" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary(4, 0.75, 0.1, complete=False)))
    train_log = tmp_path / "logs" / "psft.jsonl"
    written = steps.write_accuracy_log(train_log.with_name("psft.eval.jsonl"), out_root, [10, 20, 30])
    assert written == 2
    lines = [json.loads(x) for x in (tmp_path / "logs" / "psft.eval.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20]
    assert lines[1]["data"]["eval/all/avg@4"] == 0.5 and lines[1]["data"]["eval/toy/avg@4_stderr"] == 0.1
    assert steps.is_complete(out_root / "global_step_20") and not steps.is_complete(out_root / "global_step_30")


def test_steps_cli_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert steps.main([str(tmp_path), "--test_file", str(tmp_path / "missing.parquet")]) == 2
    test_file = tmp_path / "t.jsonl"
    test_file.write_text("{}\n")
    assert steps.main([str(tmp_path), "--test_file", str(test_file), "--model", "x"]) == 2
    assert steps.main([str(tmp_path), "--test_file", str(test_file)]) == 2  # no checkpoints
    assert "no global_step_*/huggingface" in capsys.readouterr().err


def test_accuracy_over_steps_plot(tmp_path: Path) -> None:
    from pipelines.plots import main as plot_main
    from pipelines.plots import read_accuracy_log

    logs = {}
    for label, base in (("SFT", 0.2), ("PSFT", 0.3)):
        path = tmp_path / f"{label}.eval.jsonl"
        lines = [
            {"step": s, "data": {"eval/all/avg@4": base + s / 100, "eval/all/avg@4_stderr": 0.05}} for s in (5, 10)
        ]
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        logs[label] = path
    assert read_accuracy_log(logs["SFT"]) == {"all": [(5, 0.25, 0.05), (10, pytest.approx(0.3), 0.05)]}
    written = plot_main([f"--accuracy-log={k}={v}" for k, v in logs.items()] + ["--out", str(tmp_path / "fig")])
    assert [p.name for p in written] == ["accuracy_over_steps.png"] and written[0].stat().st_size > 1000


def test_paper_table_has_both_averages(tmp_path: Path) -> None:
    assert [n for n, _ in report.IN_DOMAIN] == list(hub.IN_DOMAIN)
    assert [n for n, _ in report.OUT_OF_DOMAIN] == list(hub.OUT_OF_DOMAIN)
    model = tmp_path / "psft" / "global_step_9"
    scores = {"aime24": 0.1, "amc23": 0.3, "math500": 0.8, "gpqa_diamond": 0.4, "mmlu_pro": 0.6}
    for name, value in scores.items():
        path = model / name / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(summary(8, value, 0.01, complete=name != "amc23")))
    text = report.table([model])
    head, _, row, _ = text.splitlines()
    cells = dict(zip(head.split(), row.split(None, len(head.split()) - 1)))
    assert row.startswith("psft/global_step_9")
    assert cells["AIME24"] == "10.0" and cells["AMC23"] == "30.0*" and cells["AIME25"] == "-"
    assert "40.0* (3/6)" in row  # in-domain average over the 3 present, marked incomplete
    assert row.rstrip().endswith("50.0 (2/7)")  # out-of-domain average of 40 and 60, 2 of the 7 present
