"""verl's ``CheckpointHandler`` with the save and resume rules of :mod:`recipe.psft.checkpoints`.

Overrides three of its methods (two private, hence here among the verl adapters):

* ``_determine_resume_path``: the checkpoint chosen before Ray started (a
  :class:`~recipe.psft.checkpoints.ResumePlan`: the tracker's if complete, else the newest complete one);
* ``_load_dataloader_state``: ``data_0.pt`` with ``torch.load(weights_only=True)`` (verl uses
  ``weights_only=False``; the loader state is plain containers and tensors). verl's FSDP checkpoint
  manager still loads the model, optimizer and extra-state shards with ``weights_only=False``, which
  is why ``run_preparation`` refuses checkpoint folders that other users can write;
* ``save_checkpoint``: engine files, then the dataloader state, then a check that every rank's shards
  are visible here with the sizes the ranks see (the folder is shared), then fsync + manifest (run
  identity, lineage, kind), and only then the tracker; nothing is written once this run lost its
  folder lock; the engine is never asked to delete old checkpoints (retention is counted on disk here
  instead); a failed save removes its partial folder and raises CheckpointError naming the folder and
  the error, leaving the previous checkpoint the latest.

At construction every worker checks that it sees ``trainer.default_local_dir`` as the driver does (a
probe file written here), so a folder that is not shared by every node is refused before step 1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from verl.utils import hdfs_io
from verl.utils.checkpoint import CheckpointHandler

from .. import folder_lock
from ..checkpoints import (
    RANK_SHARD,
    ResumePlan,
    apply_retention,
    current_save_kind,
    drop_shared_write,
    read_tracker,
    step_dir,
    write_manifest,
    write_tracker,
)
from ..exit_codes import CheckpointError

NOT_SHARED = (
    "trainer.default_local_dir must be one folder that every node of the run sees (a shared network "
    "filesystem): each rank writes its own shards there and a resume reads them all"
)


def _sees(folder: str, probe: str) -> tuple[str, bool]:
    return socket.gethostname(), os.path.isfile(os.path.join(folder, probe))


def _rank_files(folder: str) -> tuple[str, dict[str, int]]:
    """The engine shards a worker sees in ``folder`` and their sizes (run inside the worker)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return socket.gethostname(), {n: os.path.getsize(os.path.join(folder, n)) for n in names if RANK_SHARD.match(n)}


def _workers(engine: Any) -> list[Any]:
    return list(getattr(engine, "workers", None) or [])


def check_shared_folder(engine: Any, root: Path) -> None:
    """Every worker sees a probe file the driver wrote in ``root``; CheckpointError naming those that don't."""
    workers = _workers(engine)
    if not workers:
        return
    import ray

    probe = f".psft_probe.{secrets.token_hex(6)}"
    root.mkdir(parents=True, exist_ok=True)
    (root / probe).write_text(socket.gethostname())
    try:
        seen = ray.get([w.__ray_call__.remote(lambda _w, f=str(root), p=probe: _sees(f, p)) for w in workers])
    finally:
        (root / probe).unlink(missing_ok=True)
    blind = [f"rank {rank} on {host}" for rank, (host, ok) in enumerate(seen) if not ok]
    if blind:
        raise CheckpointError(
            f"{', '.join(blind)} cannot see {root} as the driver on {socket.gethostname()} does: {NOT_SHARED}."
        )


def check_rank_shards(engine: Any, folder: Path) -> None:
    """Each rank's shards, as the rank sees them, are visible here with the same size; else CheckpointError."""
    workers = _workers(engine)
    if not workers:
        return
    import ray

    reports = ray.get([w.__ray_call__.remote(lambda _w, f=str(folder): _rank_files(f)) for w in workers])
    here = socket.gethostname()
    problems = []
    for rank, (host, listing) in enumerate(reports):
        own = {n: size for n, size in listing.items() if n.endswith(f"_rank_{rank}.pt")}
        if not own:
            problems.append(f"rank {rank} on {host} sees none of its shards in {folder}")
        for name, size in sorted(own.items()):
            path = folder / name
            seen = path.stat().st_size if path.is_file() else None
            if seen != size:
                what = "does not see it" if seen is None else f"sees {seen} bytes"
                problems.append(f"rank {rank} on {host} wrote {name} ({size} bytes) but the driver on {here} {what}")
    if problems:
        raise CheckpointError(f"not sealing {folder}: {'; '.join(problems)}. {NOT_SHARED}.")


def _is_ray_failure(exc: BaseException) -> bool:
    """A lost worker or node: reported as such by the trainer, not as a failed save."""
    import ray.exceptions

    lost = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError)
    return isinstance(exc, lost)


def _free_space(root: Path) -> str:
    # torch.save reports a full disk as "unexpected pos ...": say how much room there is.
    try:
        return f"{shutil.disk_usage(root).free / 2**20:.1f} MiB free on the filesystem of {root}"
    except OSError as exc:
        return f"free space of {root} unknown: {exc}"


class TrustedCheckpointHandler(CheckpointHandler):
    def __init__(self, *args: Any, resume_plan: ResumePlan, run_identity: dict[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.resume_plan = resume_plan
        self.run_identity = run_identity
        check_shared_folder(self.engine, Path(self.default_local_dir))

    def _determine_resume_path(self) -> str | None:
        return None if self.resume_plan.path is None else str(self.resume_plan.path)

    def _load_dataloader_state(self, checkpoint_path: str) -> None:
        path = Path(checkpoint_path) / f"data_{self.dp_rank}.pt"
        if not path.exists():  # verl's behaviour: a warning, and the loader starts from the beginning
            super()._load_dataloader_state(checkpoint_path)
            return
        self.train_dataloader.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def save_checkpoint(self, step: int) -> None:
        root = Path(self.default_local_dir)
        folder = step_dir(root, step)
        lease = folder_lock.held(root)
        if lease is not None:
            lease.assert_held()  # another run took the folder over: write nothing more into it
        kind = current_save_kind()
        print(f"Saving checkpoint to: {folder}", flush=True)
        try:
            if folder.exists():  # left by an earlier attempt at this step (a crash, or an abandoned branch)
                shutil.rmtree(folder)
            self.engine.save_checkpoint(local_path=str(folder), global_step=step, max_ckpt_to_keep=None)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.train_dataloader.state_dict(), folder / f"data_{self.dp_rank}.pt")
            check_rank_shards(self.engine, folder)
            drop_shared_write(folder)  # a umask of 002 must not make the next resume refuse it
            if lease is not None:
                lease.assert_held()
            write_manifest(folder, step, self.run_identity, lineage=self.resume_plan.lineage, kind=kind)
            write_tracker(root, step)
        except Exception as exc:
            if _is_ray_failure(exc):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            previous, _ = read_tracker(root)
            kept = f"the previous checkpoint {step_dir(root, previous)} is intact" if previous else "none earlier"
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise CheckpointError(
                f"saving the checkpoint of step {step} to {folder} failed: {type(exc).__name__}: {detail} "
                f"({_free_space(root)}). Removed the partial folder; {kept}. Free space or fix the folder, "
                "then rerun the same command."
            ) from exc
        print(f"Checkpoint of step {step} ({kind}) complete: {folder}", flush=True)
        if self.default_hdfs_dir:
            hdfs_io.makedirs(self.default_hdfs_dir, exist_ok=True)
            hdfs_io.copy(src=str(folder), dst=self.default_hdfs_dir, dirs_exist_ok=True)
        for removed in apply_retention(root, self.max_ckpt_to_keep, protect=step):
            print(f"[psft] removed {removed} (trainer.max_ckpt_to_keep={self.max_ckpt_to_keep})", file=sys.stderr)
