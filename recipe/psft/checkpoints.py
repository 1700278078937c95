"""Checkpoint folders you can trust: a manifest written last, a tracker never ahead of it, fallback, retention.

verl writes ``DIR/global_step_N/`` (model and optimizer shards, ``huggingface/``, ``data_0.pt``) and
then ``DIR/latest_checkpointed_iteration.txt``. A crash, a full disk or a deleted folder could leave
the tracker pointing at a folder that is partial or gone, and verl then silently starts from step 0.
Here:

* a checkpoint is *complete* when its folder holds ``psft_checkpoint.json`` (the manifest) and every
  file the manifest lists, with the listed size. The manifest is written only after all files of the
  checkpoint were written and fsynced, and the tracker only after the manifest (each by write to a
  temporary file, fsync, rename, fsync of the folder);
* :func:`resolve_resume` picks the checkpoint to resume: the tracker's if complete, otherwise the
  newest complete one, saying so; when checkpoints exist but none is usable it stops with a message
  naming them instead of starting again from step 0;
* every manifest records the run's *lineage* (a random id created when a run starts from step 0 and
  inherited by its resumes) and the folder's ``psft_run.json`` names the lineage of the run that owns
  it now; :func:`resolve_resume` resumes (tracker or fallback) only checkpoints of that lineage, so a
  run started over with ``resume_mode=disable`` never falls back to the previous run's checkpoints;
* every manifest records its *kind*: ``milestone`` (due by ``trainer.save_freq``, or the final step)
  or ``interval`` (``psft.save_interval_minutes``, or a save on a stop signal). :func:`apply_retention`
  keeps the newest ``trainer.max_ckpt_to_keep`` milestones, counted on disk so the limit holds across
  restarts, and only the newest interval checkpoint, and only while it is newer than every milestone:
  interval saves never evict a milestone.

Folders written before manifests existed are accepted when the tracker names them (``legacy``).
Checkpoints without a lineage or kind (written by earlier versions) count as the current lineage's
and as milestones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exit_codes import CheckpointError
from .files import atomic_write, fsync_path

MANIFEST = "psft_checkpoint.json"
TRACKER = "latest_checkpointed_iteration.txt"
RUN_RECORD = "psft_run.json"
STEP_DIR = re.compile(r"^global_step_(\d+)$")
RANK_SHARD = re.compile(r"^(model|optim|extra_state)_world_size_(\d+)_rank_(\d+)\.pt$")
MILESTONE, INTERVAL = "milestone", "interval"

# The kind of the save in progress: set by the loop (long_run.py), which knows why it saves, and read by
# the checkpoint handler, whose save_checkpoint(step) signature is verl's.
_SAVE_KIND: ContextVar[str] = ContextVar("psft_save_kind", default=MILESTONE)


@contextmanager
def save_kind(kind: str) -> Iterator[None]:
    if kind not in (MILESTONE, INTERVAL):
        raise ValueError(f"save kind {kind!r}: expected {MILESTONE} or {INTERVAL}")
    token = _SAVE_KIND.set(kind)
    try:
        yield
    finally:
        _SAVE_KIND.reset(token)


def current_save_kind() -> str:
    return _SAVE_KIND.get()


def new_lineage() -> str:
    return uuid.uuid4().hex


def read_run_record(root: Path) -> dict[str, Any]:
    """``<root>/psft_run.json`` ({} if absent or unreadable: a folder of an earlier version)."""
    try:
        data = json.loads((Path(root) / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_record(root: Path, lineage: str, resumed_from: str | None) -> None:
    """Name the lineage that owns ``root`` now (written under the folder lock, before training)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    record = {"lineage": lineage, "resumed_from": resumed_from}
    atomic_write(Path(root) / RUN_RECORD, json.dumps(record, indent=1, sort_keys=True))


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{step}"


def fsync_tree(root: Path) -> dict[str, int]:
    """fsync every file and folder under ``root``; return {relative path: size} of its files."""
    files: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            fsync_path(path)
            files[str(path.relative_to(root))] = path.stat().st_size
        fsync_path(Path(dirpath), directory=True)
    return files


def missing_rank_shards(files: dict[str, int]) -> list[str]:
    """Per-rank engine shards a folder lacks: for every kind of shard present (model, optim,
    extra_state) written for world size W, each of ranks 0..W-1 must be there."""
    present: dict[tuple[str, int], set[int]] = {}
    for name in files:
        match = RANK_SHARD.match(name)
        if match:
            present.setdefault((match.group(1), int(match.group(2))), set()).add(int(match.group(3)))
    return [
        f"{kind}_world_size_{world}_rank_{rank}.pt"
        for (kind, world), ranks in sorted(present.items())
        for rank in range(world)
        if rank not in ranks
    ]


def write_manifest(
    folder: Path, step: int, run_identity: dict[str, Any], lineage: str | None = None, kind: str = MILESTONE
) -> None:
    """Seal a checkpoint folder whose files are all written: fsync them, then write the manifest.

    Raises CheckpointError when a rank's shard is missing (the folder is not one shared folder)."""
    files = fsync_tree(folder)
    files.pop(MANIFEST, None)
    missing = missing_rank_shards(files)
    if missing:
        raise CheckpointError(
            f"{folder} lacks {', '.join(missing)} as this process sees it: every rank writes its own shard, so "
            "trainer.default_local_dir must be one folder shared by every node (a network filesystem)"
        )
    manifest = {"step": step, "files": files, "run": run_identity, "lineage": lineage, "kind": kind}
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def write_tracker(root: Path, step: int) -> None:
    atomic_write(Path(root) / TRACKER, str(step))


@dataclass
class CheckpointState:
    """What is on disk for one ``global_step_N`` folder."""

    step: int
    path: Path
    complete: bool
    reason: str = ""
    manifest: dict[str, Any] | None = None

    @property
    def lineage(self) -> str | None:
        return None if self.manifest is None else self.manifest.get("lineage")

    @property
    def kind(self) -> str:
        return MILESTONE if self.manifest is None else str(self.manifest.get("kind") or MILESTONE)


def inspect_checkpoint(path: Path) -> CheckpointState:
    """Whether ``path`` is a complete checkpoint; if not, why (missing folder, manifest or file)."""
    match = STEP_DIR.match(path.name)
    step = int(match.group(1)) if match else -1
    if not path.is_dir():
        return CheckpointState(step, path, False, "the folder does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return CheckpointState(step, path, False, f"no {MANIFEST}: its save did not finish")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        listed = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CheckpointState(step, path, False, f"{MANIFEST} is unreadable ({exc})")
    for name, size in sorted(listed.items()):
        file = path / name
        try:
            actual = file.stat().st_size
        except OSError:
            return CheckpointState(step, path, False, f"{name} is missing")
        if actual != size:
            return CheckpointState(step, path, False, f"{name} has {actual} bytes, {size} were written")
    return CheckpointState(step, path, True, manifest=manifest)


def list_checkpoints(root: Path) -> list[CheckpointState]:
    """Every ``global_step_N`` folder under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [inspect_checkpoint(p) for p in root.iterdir() if STEP_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda state: state.step)


def readable_checkpoints(root: Path) -> list[CheckpointState]:
    """The checkpoints another process may read now (``evaluation/over_training.py``), oldest first.

    The rule a resume follows: the complete ones. Folders without a manifest (written before manifests
    existed, or by plain verl) count, as :func:`resolve_resume` lets them, only where no complete
    checkpoint exists, and only up to the tracker's step (verl writes the tracker after the save).
    """
    states = list_checkpoints(root)
    complete = [s for s in states if s.complete]
    if complete:
        return complete
    tracked, _ = read_tracker(root)
    if tracked is None:
        return []
    return [s for s in states if s.step <= tracked and not (s.path / MANIFEST).exists()]


def read_tracker(root: Path) -> tuple[int | None, str]:
    """The tracker's step, or None and why not."""
    tracker = root / TRACKER
    if not tracker.exists():
        return None, f"{tracker} does not exist"
    try:
        return int(tracker.read_text().strip()), ""
    except (OSError, ValueError) as exc:
        return None, f"{tracker} is unreadable ({exc})"


@dataclass
class ResumePlan:
    """The checkpoint a run resumes from (None path: start from step 0)."""

    path: Path | None = None
    step: int = 0
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    lineage: str | None = None  # of the run about to start (set by run_preparation.prepare_run)

    @property
    def run_identity(self) -> dict[str, Any] | None:
        return None if self.manifest is None else self.manifest.get("run")


def _say(message: str) -> None:
    print(f"[psft] {message}", file=sys.stderr, flush=True)


def _explicit_checkpoint(path_value: str) -> ResumePlan:
    path = Path(os.path.expanduser(path_value))
    state = inspect_checkpoint(path)
    if state.step < 0:
        raise CheckpointError(f"trainer.resume_from_path={path_value}: expected a .../global_step_N folder")
    if state.complete:
        return ResumePlan(path, state.step, state.manifest)
    if path.is_dir() and not (path / MANIFEST).exists() and (path / "data_0.pt").exists():
        _say(f"{path} has no {MANIFEST} (written before integrity manifests): resuming from it unverified")
        return ResumePlan(path, state.step)
    raise CheckpointError(f"trainer.resume_from_path={path_value} is not a usable checkpoint: {state.reason}")


def resolve_resume(root_value: str, resume_mode: str = "auto", resume_from_path: str | None = None) -> ResumePlan:
    """Which checkpoint to resume from, following ``trainer.resume_mode`` (verl's auto|disable|resume_path).

    Raises CheckpointError when the folder holds checkpoints but none is usable: a run never starts
    again from step 0 on top of existing checkpoints without being told to (``resume_mode=disable``).
    """
    if resume_mode == "disable":
        return ResumePlan()
    if resume_mode not in ("auto", "resume_path"):
        raise CheckpointError(f"trainer.resume_mode={resume_mode!r}: expected auto, disable or resume_path")
    if resume_mode == "resume_path" or resume_from_path:
        if not resume_from_path:
            raise CheckpointError("trainer.resume_mode=resume_path needs trainer.resume_from_path=.../global_step_N")
        return _explicit_checkpoint(resume_from_path)

    root = Path(os.path.expanduser(root_value))
    states = list_checkpoints(root)
    tracked, tracker_problem = read_tracker(root)
    if tracked is None and not states:
        return ResumePlan()
    owner = read_run_record(root).get("lineage")

    def ours(state: CheckpointState) -> bool:
        return owner is None or state.lineage in (None, owner)

    complete = [s for s in states if s.complete and ours(s)]
    foreign = [s for s in states if s.complete and not ours(s)]

    if tracked is not None:
        target = inspect_checkpoint(step_dir(root, tracked))
        if target.complete and ours(target):
            return ResumePlan(target.path, target.step, target.manifest)
        legacy = target.path.is_dir() and not (target.path / MANIFEST).exists() and not complete
        if legacy and (target.path / "data_0.pt").exists() and not foreign:
            _say(f"{target.path} has no {MANIFEST} (written before integrity manifests): resuming from it unverified")
            return ResumePlan(target.path, target.step)
        reason = target.reason if not target.complete else f"it belongs to another run (lineage {target.lineage})"
        problem = f"the latest checkpoint {target.path} is not usable: {reason}"
    else:
        problem = tracker_problem

    if complete:
        best = complete[-1]
        note = f"{problem}; resuming from {best.path} (step {best.step}), the newest complete checkpoint of this run"
        _say(note)
        return ResumePlan(best.path, best.step, best.manifest, notes=[note])
    listing = (
        "; ".join(f"{s.path.name}: {s.reason or f'complete, of another run (lineage {s.lineage})'}" for s in states)
        or "no global_step_N folders"
    )
    whose = f" of this folder's run (lineage {owner}, {RUN_RECORD})" if owner else ""
    raise CheckpointError(
        f"{problem}, and {root} holds no complete checkpoint{whose} ({listing}). Not starting again from step 0 on "
        f"top of them: restore the folder, move it away, or pass trainer.resume_mode=disable to train from scratch."
    )


def apply_retention(root: Path, keep: int | None, protect: int) -> list[Path]:
    """Delete what the retention rule lets go (module docstring), and failed saves older than ``protect``.

    Milestones: all but the newest ``keep`` (None or <= 0 keeps all). Interval checkpoints: all but the
    newest, and that one too once a milestone is newer. Counted on disk, so the rule holds across
    restarts. Never deletes the checkpoint of step ``protect`` (the one just written). Returns the
    deleted folders.
    """
    states = list_checkpoints(root)
    complete = [s for s in states if s.complete]
    milestones = [s for s in complete if s.kind != INTERVAL]
    intervals = [s for s in complete if s.kind == INTERVAL]
    doomed = milestones[:-keep] if keep and keep > 0 and len(milestones) > keep else []
    newest_milestone = milestones[-1].step if milestones else -1
    doomed += [s for s in intervals[:-1]] + [s for s in intervals[-1:] if s.step < newest_milestone]
    # Partial folders of failed saves (no dataloader state, which is written after the engine's files);
    # a folder without a manifest but with it may be a checkpoint of an older version: kept.
    doomed += [s for s in states if not s.complete and s.step < protect and not (s.path / "data_0.pt").exists()]
    removed = []
    for state in sorted(doomed, key=lambda s: s.step):
        if state.step == protect:
            continue
        shutil.rmtree(state.path, ignore_errors=True)
        removed.append(state.path)
    return removed


def drop_shared_write(path: Path) -> None:
    """Remove group/other write permission from ``path`` and everything under it (the checkpoints this
    run writes, so that a umask of 002 does not make the next resume refuse them; see check_trusted)."""
    for dirpath, _dirnames, filenames in os.walk(path):
        for entry in [Path(dirpath)] + [Path(dirpath) / n for n in filenames]:
            mode = entry.lstat().st_mode
            if mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(mode):
                entry.chmod(stat.S_IMODE(mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def check_trusted(path: Path, allow_shared_writable: bool, recursive: bool = True) -> None:
    """Refuse a checkpoint folder (or a file in it) that another user may have written: loading a
    checkpoint unpickles its files (verl loads its shards with ``torch.load(weights_only=False)``),
    which runs any code they contain. Raises CheckpointError naming the path, unless allowed."""
    if allow_shared_writable or not path.exists():
        return
    uid = os.getuid()
    for dirpath, _dirnames, filenames in os.walk(path) if recursive else [(str(path), [], [])]:
        for entry in [Path(dirpath)] + [Path(dirpath) / n for n in filenames]:
            st = entry.lstat()
            if st.st_uid != uid or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                who = f"owned by uid {st.st_uid}" if st.st_uid != uid else f"mode {stat.filemode(st.st_mode)}"
                raise CheckpointError(
                    f"{entry} is writable by other users ({who}): a checkpoint is loaded with pickle, so whoever can "
                    f"write it can run code in this run. Make it yours and not group/other-writable (chmod -R go-w "
                    f"{path}), or pass psft.allow_shared_writable_checkpoints=true if you trust every writer."
                )
