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
* :func:`apply_retention` keeps the newest ``trainer.max_ckpt_to_keep`` complete checkpoints, counted
  on disk, so the limit holds across restarts.

Folders written before manifests existed are accepted when the tracker names them (``legacy``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exit_codes import CheckpointError
from .files import atomic_write, fsync_path

MANIFEST = "psft_checkpoint.json"
TRACKER = "latest_checkpointed_iteration.txt"
STEP_DIR = re.compile(r"^global_step_(\d+)$")


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


def write_manifest(folder: Path, step: int, run_identity: dict[str, Any]) -> None:
    """Seal a checkpoint folder whose files are all written: fsync them, then write the manifest."""
    files = fsync_tree(folder)
    files.pop(MANIFEST, None)
    manifest = {"step": step, "files": files, "run": run_identity}
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
    complete = [s for s in states if s.complete]

    if tracked is not None:
        target = inspect_checkpoint(step_dir(root, tracked))
        if target.complete:
            return ResumePlan(target.path, target.step, target.manifest)
        legacy = target.path.is_dir() and not (target.path / MANIFEST).exists() and not complete
        if legacy and (target.path / "data_0.pt").exists():
            _say(f"{target.path} has no {MANIFEST} (written before integrity manifests): resuming from it unverified")
            return ResumePlan(target.path, target.step)
        problem = f"the latest checkpoint {target.path} is not usable: {target.reason}"
    else:
        problem = tracker_problem

    if complete:
        best = complete[-1]
        note = f"{problem}; resuming from {best.path} (step {best.step}), the newest complete checkpoint"
        _say(note)
        return ResumePlan(best.path, best.step, best.manifest, notes=[note])
    listing = "; ".join(f"{s.path.name}: {s.reason}" for s in states) or "no global_step_N folders"
    raise CheckpointError(
        f"{problem}, and {root} holds no complete checkpoint ({listing}). Not starting again from step 0 on top "
        f"of them: restore the folder, move it away, or pass trainer.resume_mode=disable to train from scratch."
    )


def apply_retention(root: Path, keep: int | None, protect: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, and failed saves older than ``protect``.

    Counted on disk, so the limit holds across restarts. Never deletes the checkpoint of step ``protect``
    (the one just written). Returns the deleted folders.
    """
    states = list_checkpoints(root)
    removed = []
    complete = [s for s in states if s.complete]
    doomed = complete[:-keep] if keep and keep > 0 and len(complete) > keep else []
    # Partial folders of failed saves (no dataloader state, which is written after the engine's files);
    # a folder without a manifest but with it may be a checkpoint of an older version: kept.
    doomed += [s for s in states if not s.complete and s.step < protect and not (s.path / "data_0.pt").exists()]
    for state in doomed:
        if state.step == protect:
            continue
        shutil.rmtree(state.path, ignore_errors=True)
        removed.append(state.path)
    return removed
