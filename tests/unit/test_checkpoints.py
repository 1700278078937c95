"""Checkpoint folders: manifest, completeness, resume choice with fallback, retention across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.psft.checkpoints import (
    MANIFEST,
    TRACKER,
    apply_retention,
    inspect_checkpoint,
    resolve_resume,
    step_dir,
    write_manifest,
    write_tracker,
)
from recipe.psft.exit_codes import CheckpointError


def fake_checkpoint(root: Path, step: int, complete: bool = True, track: bool = True) -> Path:
    folder = step_dir(root, step)
    (folder / "huggingface").mkdir(parents=True)
    (folder / "model_world_size_1_rank_0.pt").write_bytes(b"w" * (100 + step))
    (folder / "huggingface" / "model.safetensors").write_bytes(b"h" * 50)
    (folder / "data_0.pt").write_bytes(b"d")
    if complete:
        write_manifest(folder, step, {"trainer.seed": 1})
        if track:
            write_tracker(root, step)
    return folder


def test_manifest_lists_files_and_identity(tmp_path):
    folder = fake_checkpoint(tmp_path, 2)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["step"] == 2 and manifest["run"] == {"trainer.seed": 1}
    assert manifest["files"]["huggingface/model.safetensors"] == 50
    assert inspect_checkpoint(folder).complete
    assert (tmp_path / TRACKER).read_text() == "2"


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "huggingface" / "model.safetensors").write_bytes(b"h" * 10), "has 10 bytes, 50 were written"),
        (lambda f: (f / "data_0.pt").unlink(), "data_0.pt is missing"),
        (lambda f: (f / MANIFEST).write_text("{trunc"), "unreadable"),
        (lambda f: (f / MANIFEST).unlink(), "did not finish"),
    ],
    ids=["truncated", "file_missing", "manifest_corrupt", "manifest_missing"],
)
def test_damaged_latest_falls_back_to_newest_complete(tmp_path, capsys, damage, reason):
    fake_checkpoint(tmp_path, 1)
    latest = fake_checkpoint(tmp_path, 2)
    damage(latest)
    assert reason in inspect_checkpoint(latest).reason
    plan = resolve_resume(str(tmp_path))
    assert plan.step == 1 and plan.path == step_dir(tmp_path, 1)
    said = capsys.readouterr().err
    assert "global_step_2" in said and "resuming from" in said and "global_step_1" in said


def test_deleted_latest_folder_and_tracker_falls_back(tmp_path):
    fake_checkpoint(tmp_path, 1)
    fake_checkpoint(tmp_path, 2)
    import shutil

    shutil.rmtree(step_dir(tmp_path, 2))
    assert resolve_resume(str(tmp_path)).step == 1
    (tmp_path / TRACKER).unlink()
    assert resolve_resume(str(tmp_path)).step == 1  # no tracker, still never step 0


def test_checkpoints_but_none_usable_stops_instead_of_restarting(tmp_path):
    fake_checkpoint(tmp_path, 3, complete=False)
    write_tracker(tmp_path, 3)
    (step_dir(tmp_path, 3) / "data_0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"global_step_3.*not usable.*resume_mode=disable"):
        resolve_resume(str(tmp_path))
    assert resolve_resume(str(tmp_path), resume_mode="disable").path is None


def test_legacy_checkpoint_without_manifest_is_resumed_when_tracked(tmp_path, capsys):
    fake_checkpoint(tmp_path, 4, complete=False)
    write_tracker(tmp_path, 4)
    assert resolve_resume(str(tmp_path)).step == 4
    assert "unverified" in capsys.readouterr().err


def test_empty_or_missing_folder_starts_from_scratch(tmp_path):
    assert resolve_resume(str(tmp_path / "nothing")).path is None
    assert resolve_resume(str(tmp_path)).path is None


def test_explicit_resume_path_must_be_complete(tmp_path):
    fake_checkpoint(tmp_path, 1)
    assert resolve_resume(str(tmp_path), "resume_path", str(step_dir(tmp_path, 1))).step == 1
    with pytest.raises(CheckpointError, match="global_step_7"):
        resolve_resume(str(tmp_path), "resume_path", str(step_dir(tmp_path, 7)))


def test_retention_counts_on_disk_and_removes_failed_saves(tmp_path):
    for step in (1, 2, 3):  # e.g. written by an earlier process
        fake_checkpoint(tmp_path, step)
    failed = step_dir(tmp_path, 4)
    failed.mkdir()
    (failed / "partial.pt").write_bytes(b"x")
    fake_checkpoint(tmp_path, 5)
    removed = apply_retention(tmp_path, keep=2, protect=5)
    assert sorted(p.name for p in removed) == ["global_step_1", "global_step_2", "global_step_4"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["global_step_3", "global_step_5"]
    assert apply_retention(tmp_path, keep=None, protect=5) == []
