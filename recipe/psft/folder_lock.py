"""One run per checkpoint folder: an exclusive lease on ``trainer.default_local_dir``, held for the run.

Two runs writing one folder (an lr sweep under one experiment name, a job submitted twice, a requeued
job overlapping its predecessor) delete each other's saves, race on the tracker and can seal a
checkpoint that mixes both runs' shards. :func:`acquire` is called before the checkpoint to resume is
chosen and the lease is kept until the process ends.

**Why a lease file and not ``flock``**: on NFS mounted ``nolock`` or Lustre with ``localflock``, flock
is node-local, so two hosts would both "hold" it. The lease is ``psft_lock.json`` in the folder,
created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+), naming its holder (host,
pid, start time; nothing else: no command line, no environment). The holder rewrites it every
``lease_s / 4`` seconds from a background thread. Another run

* refuses at once (:class:`FolderLocked`, exit 2) while the lease is fresh, naming the holder;
* takes it over once the lease has not been renewed for ``lease_s`` seconds (a dead host), or at once
  when the holder is on this host and its process is gone (same boot, pid dead or reused).

Takeover renames the stale file to a private name, checks it is the stale lease it judged (not a
fresh one another taker just created: that is put back), and then creates its own. A holder that finds
its lease taken over (it stalled for longer than the lease) marks the lock lost; the checkpoint
handler then refuses to save (:meth:`FolderLease.assert_held`).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .exit_codes import BAD_INPUT, CheckpointError, RunStopped

LOCK_FILE = "psft_lock.json"
DEFAULT_LEASE_S = 120.0


class FolderLocked(RunStopped):
    """Another live run holds the checkpoint folder."""

    exit_code = BAD_INPUT


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): tells a live
    holder from a new process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    """The lease's content (None if unreadable or half-written) and its mtime (None if gone)."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, mtime
    return (data if isinstance(data, dict) else None), mtime


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown holder (the lock file is being written or is damaged)"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


@dataclass
class FolderLease:
    """A held lease; renewed by a daemon thread until :meth:`release`."""

    folder: Path
    lease_s: float
    holder: dict[str, Any]
    lost: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def _write(self, create: bool) -> None:
        self.holder["renewed"] = time.time()
        text = json.dumps(self.holder, indent=1, sort_keys=True)
        if create:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return
        tmp = self.path.with_name(f"{LOCK_FILE}.{self.holder['token']}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)

    def renew(self) -> bool:
        """Rewrite the lease if it is still ours; mark it lost (and stop renewing) if not."""
        if self.lost:
            return False
        current, mtime = _read(self.path)
        if mtime is None:
            self.lost = f"the lease {self.path} was removed"
            return False
        if current is None:  # unreadable for a moment (a network filesystem): try again next time
            return True
        if current.get("token") != self.holder["token"]:
            self.lost = f"the lease {self.path} was taken over by {describe(current)}"
            return False
        try:
            self._write(create=False)
        except OSError as exc:  # a filesystem hiccup: the next renewal retries; expiry is lease_s away
            print(f"[psft] warning: could not renew {self.path}: {exc}", flush=True)
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            if not self.renew():
                print(f"[psft] error: {self.lost}; this run no longer owns {self.folder}", flush=True)
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="psft-folder-lease", daemon=True)
        self._thread.start()

    def assert_held(self) -> None:
        """Raise CheckpointError if another run took the folder over (this one stalled past its lease)."""
        if self.lost:
            raise CheckpointError(f"not saving: {self.lost}. Two runs must not write {self.folder}.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        current, _ = _read(self.path)
        if current is not None and current.get("token") == self.holder["token"]:
            self.path.unlink(missing_ok=True)
        _HELD.pop(_key(self.folder), None)


_HELD: dict[str, FolderLease] = {}
_HELD_LOCK = threading.Lock()


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def held(folder: str | Path) -> FolderLease | None:
    """The lease this process holds on ``folder``, if any."""
    return _HELD.get(_key(Path(folder)))


def _stale_reason(holder: dict[str, Any] | None, mtime: float, lease_s: float, now: float) -> str:
    """Why the lease may be taken over, or "" while its holder may still be alive."""
    renewed = max(mtime, float((holder or {}).get("renewed") or 0))
    age = now - renewed
    if holder and holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id():
        pid = int(holder.get("pid") or 0)
        if pid and (not _pid_alive(pid) or _process_start(pid) != holder.get("pid_start", "")):
            return f"its holder (pid {pid} on this host) is gone"
    lease = float((holder or {}).get("lease_s") or lease_s)
    if age > lease:
        return f"its lease was last renewed {age:.0f} s ago (lease {lease:.0f} s)"
    return ""


def _take_over(path: Path, judged: dict[str, Any] | None) -> None:
    """Move a stale lease out of the way, unless someone replaced it since it was judged stale."""
    private = path.with_name(f"{LOCK_FILE}.stale.{secrets.token_hex(6)}")
    try:
        os.rename(path, private)
    except FileNotFoundError:
        return  # another taker moved it first: the caller retries the create
    moved, _ = _read(private)
    judged_token = (judged or {}).get("token")
    if moved is not None and moved.get("token") != judged_token:
        # A fresh lease another taker created after our judgement: put it back.
        try:
            os.link(private, path)
        except FileExistsError:
            pass
    private.unlink(missing_ok=True)


def acquire(folder: str | Path, lease_s: float = DEFAULT_LEASE_S, settle_s: float = 2.0) -> FolderLease:
    """Hold ``folder`` exclusively for this process (see the module docstring); reentrant per process.

    Raises FolderLocked naming the holder when another live run holds it. ``settle_s``: how long a
    lock file that exists but is not yet readable (being created) is given before it counts as held.
    """
    if lease_s <= 0:
        raise ValueError(f"lease_s={lease_s}: must be > 0")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _HELD_LOCK:
        mine = _HELD.get(_key(folder))
        if mine is not None and not mine.lost:
            return mine
        started = time.time()
        lease = FolderLease(
            folder,
            lease_s,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": _process_start(os.getpid()),
                "boot_id": _boot_id(),
                "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                "lease_s": lease_s,
                "token": secrets.token_hex(8),
            },
        )
        deadline = time.monotonic() + settle_s
        while True:
            try:
                lease._write(create=True)
                break
            except FileExistsError:
                pass
            holder, mtime = _read(lease.path)
            if mtime is None:
                continue  # released or moved between our create and read: try again
            reason = _stale_reason(holder, mtime, lease_s, time.time())
            if not reason and holder is None and time.monotonic() < deadline:
                time.sleep(0.05)  # created but not yet written by its owner
                continue
            if not reason:
                raise FolderLocked(
                    f"the checkpoint folder {folder} is in use by another run: {describe(holder)} "
                    f"(lock file {lease.path}). Two runs must not share a folder: wait for it to end, or give this "
                    "run its own trainer.experiment_name or trainer.default_local_dir. If that run is dead on "
                    f"another host, its lease expires {lease_s:.0f} s after its last renewal (psft.lock_lease_seconds) "
                    "and the next start takes the folder over."
                )
            print(f"[psft] taking over {lease.path} from {describe(holder)}: {reason}", flush=True)
            _take_over(lease.path, holder)
        lease.start()
        _HELD[_key(folder)] = lease
    atexit.register(lease.release)
    return lease
