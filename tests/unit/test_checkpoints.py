"""Checkpoint folders: manifest, completeness, resume choice with fallback, retention across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.psft.checkpoints import (
    INTERVAL,
    MANIFEST,
    MILESTONE,
    TRACKER,
    apply_retention,
    check_trusted,
    drop_shared_write,
    inspect_checkpoint,
    missing_rank_shards,
    resolve_resume,
    step_dir,
    write_manifest,
    write_run_record,
    write_tracker,
)
from recipe.psft.exit_codes import CheckpointError


def fake_checkpoint(
    root: Path, step: int, complete: bool = True, track: bool = True, lineage: str | None = None, kind: str = MILESTONE
) -> Path:
    folder = step_dir(root, step)
    (folder / "huggingface").mkdir(parents=True)
    (folder / "model_world_size_1_rank_0.pt").write_bytes(b"w" * (100 + step))
    (folder / "huggingface" / "model.safetensors").write_bytes(b"h" * 50)
    (folder / "data_0.pt").write_bytes(b"d")
    if complete:
        write_manifest(folder, step, {"trainer.seed": 1}, lineage=lineage, kind=kind)
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


def test_manifest_records_lineage_and_kind(tmp_path):
    folder = fake_checkpoint(tmp_path, 3, lineage="run-a", kind=INTERVAL)
    state = inspect_checkpoint(folder)
    assert state.lineage == "run-a" and state.kind == INTERVAL
    assert inspect_checkpoint(fake_checkpoint(tmp_path, 4)).kind == MILESTONE  # no kind recorded: a milestone


def test_fallback_never_resumes_another_lineage(tmp_path, capsys):
    """Run A reached step 6; run B restarted the folder from scratch (resume_mode=disable) and saved step 2,
    then B's step 2 was damaged. Today's rule (newest complete) would resume A's step 6."""
    for step in (4, 5, 6):
        fake_checkpoint(tmp_path, step, lineage="run-a")
    write_run_record(tmp_path, "run-b", None)
    b2 = fake_checkpoint(tmp_path, 2, lineage="run-b")
    assert resolve_resume(str(tmp_path)).path == b2  # the tracker's, B's
    (b2 / "data_0.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        resolve_resume(str(tmp_path))
    message = str(err.value)
    assert "global_step_6: complete, of another run (lineage run-a)" in message
    assert "lineage run-b" in message
    fake_checkpoint(tmp_path, 1, lineage="run-b", track=False)
    assert resolve_resume(str(tmp_path)).step == 1  # B's own older checkpoint


def test_tracker_naming_another_lineage_is_not_resumed(tmp_path):
    fake_checkpoint(tmp_path, 6, lineage="run-a")  # tracker -> 6
    write_run_record(tmp_path, "run-b", None)  # B started over and has not saved yet
    with pytest.raises(CheckpointError, match="belongs to another run"):
        resolve_resume(str(tmp_path))


def test_interval_saves_never_evict_milestones(tmp_path):
    """save_freq=100 with interval saves every 10 steps in between: the review's unit case."""
    for step in range(10, 160, 10):
        kind = MILESTONE if step % 100 == 0 else INTERVAL
        fake_checkpoint(tmp_path, step, kind=kind)
        apply_retention(tmp_path, keep=3, protect=step)
    kept = sorted(int(p.name.split("_")[-1]) for p in tmp_path.glob("global_step_*"))
    assert kept == [100, 150]  # the milestone, and only the newest interval save (newer than it)
    fake_checkpoint(tmp_path, 200, kind=MILESTONE)
    apply_retention(tmp_path, keep=3, protect=200)
    kept = sorted(int(p.name.split("_")[-1]) for p in tmp_path.glob("global_step_*"))
    assert kept == [100, 200]  # the interval save is superseded by a newer milestone


def test_max_ckpt_to_keep_counts_milestones_only(tmp_path):
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step, kind=MILESTONE)
        fake_checkpoint(tmp_path, step + 1, kind=INTERVAL)
        apply_retention(tmp_path, keep=2, protect=step + 1)
    kept = sorted(int(p.name.split("_")[-1]) for p in tmp_path.glob("global_step_*"))
    assert kept == [6, 8, 9]


def test_sealing_refuses_a_folder_missing_a_ranks_shard(tmp_path):
    folder = step_dir(tmp_path, 1)
    folder.mkdir()
    for kind in ("model", "optim", "extra_state"):
        (folder / f"{kind}_world_size_2_rank_0.pt").write_bytes(b"x")
    (folder / "optim_world_size_2_rank_1.pt").write_bytes(b"x")
    assert missing_rank_shards({p.name: 1 for p in folder.iterdir()}) == [
        "extra_state_world_size_2_rank_1.pt",
        "model_world_size_2_rank_1.pt",
    ]
    with pytest.raises(CheckpointError, match="shared by every node"):
        write_manifest(folder, 1, {})
    assert not (folder / MANIFEST).exists()


def test_checkpoint_writable_by_others_is_refused_unless_allowed(tmp_path):
    folder = fake_checkpoint(tmp_path, 1)
    check_trusted(folder, allow_shared_writable=False)
    shard = folder / "model_world_size_1_rank_0.pt"
    shard.chmod(0o664)
    with pytest.raises(CheckpointError, match=r"model_world_size_1_rank_0.pt is writable by other users.*-rw-rw-r--"):
        check_trusted(folder, allow_shared_writable=False)
    check_trusted(folder, allow_shared_writable=True)
    check_trusted(tmp_path, allow_shared_writable=False, recursive=False)  # the root alone is fine
    drop_shared_write(folder)  # what the checkpoint handler does before sealing
    assert shard.stat().st_mode & 0o777 == 0o644
    check_trusted(folder, allow_shared_writable=False)


def test_dataloader_state_loads_with_weights_only(tmp_path):
    """The override of verl's _load_dataloader_state uses torch.load(weights_only=True): the state of the
    loader the trainer builds (StatefulDataLoader over a shuffled DistributedSampler) must load that way."""
    import torch
    from torch.utils.data import DistributedSampler
    from torchdata.stateful_dataloader import StatefulDataLoader

    data = list(range(24))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=1)
    loader = StatefulDataLoader(data, batch_size=4, sampler=sampler, drop_last=True)
    it = iter(loader)
    next(it)
    next(it)
    torch.save(loader.state_dict(), tmp_path / "data_0.pt")
    from recipe.psft.verl_adapters.checkpoint_handler import TrustedCheckpointHandler

    handler = TrustedCheckpointHandler.__new__(TrustedCheckpointHandler)  # only what the method reads
    handler.dp_rank = 0
    handler.train_dataloader = StatefulDataLoader(data, batch_size=4, sampler=sampler, drop_last=True)
    handler._load_dataloader_state(str(tmp_path))
    assert [b.tolist() for b in handler.train_dataloader] == [b.tolist() for b in it]

    # A data_0.pt that would run code when unpickled is refused, the code never runs.
    marker = tmp_path / "ran"
    torch.save({"x": _RunsCode(str(marker))}, tmp_path / "data_0.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        handler._load_dataloader_state(str(tmp_path))
    assert not marker.exists()


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))
