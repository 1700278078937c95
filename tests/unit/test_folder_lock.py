"""One run per checkpoint folder (recipe/psft/folder_lock.py), with real separate processes and real files.

Each holder is a Python process that takes the lease and prints "held" (or the refusal), then waits for
a line on stdin (or is killed). No Ray.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recipe.psft import folder_lock
from recipe.psft.exit_codes import CheckpointError
from recipe.psft.files import atomic_write
from recipe.psft.folder_lock import LOCK_FILE, FolderLocked

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from recipe.psft import folder_lock
try:
    lease = folder_lock.acquire(sys.argv[1], lease_s=float(sys.argv[2]))
except folder_lock.FolderLocked as exc:
    print("refused:", exc, flush=True)
    sys.exit(exc.exit_code)
print("held", flush=True)
sys.stdin.readline()
"""


def start_holder(folder: Path, lease_s: float = 30.0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(lease_s)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc


def first_line(proc: subprocess.Popen) -> str:
    return proc.stdout.readline().strip()


def test_second_process_is_refused_within_seconds_naming_the_holder(tmp_path):
    first = start_holder(tmp_path)
    try:
        assert first_line(first) == "held"
        start = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path), "30"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        elapsed = time.monotonic() - start
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {first.pid}" in second.stdout and f"host {socket.gethostname()}" in second.stdout
        assert "started 20" in second.stdout  # the holder's start time (ISO, UTC)
        print(f"second run refused in {elapsed:.2f} s (interpreter start included)")
        assert elapsed < 10
    finally:
        first.communicate("\n", timeout=30)
    assert first.returncode == 0
    assert not (tmp_path / LOCK_FILE).exists()  # released at exit


def test_lock_file_holds_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    lease = folder_lock.acquire(tmp_path / "ckpt", lease_s=30)
    try:
        text = (tmp_path / "ckpt" / LOCK_FILE).read_text()
        assert "sk-secret-value" not in text
        assert set(json.loads(text)) == {
            "host",
            "pid",
            "pid_start",
            "boot_id",
            "started",
            "lease_s",
            "token",
            "renewed",
        }
    finally:
        lease.release()


def test_holder_killed_on_this_host_is_taken_over_at_once(tmp_path):
    first = start_holder(tmp_path, lease_s=600)
    assert first_line(first) == "held"
    first.send_signal(signal.SIGKILL)  # no atexit: the lock file stays, naming a dead pid
    first.wait(timeout=30)
    assert (tmp_path / LOCK_FILE).exists()
    second = start_holder(tmp_path, lease_s=600)
    try:
        out = first_line(second)
        while out.startswith("[psft] taking over"):
            assert f"pid {first.pid} on this host) is gone" in out
            out = first_line(second)
        assert out == "held"
    finally:
        second.communicate("\n", timeout=30)


def write_foreign_lease(folder: Path, renewed_ago: float, lease_s: float) -> None:
    """A lease held by a process on another host (as on a shared filesystem), last renewed ``renewed_ago`` s ago."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"host": "other-node", "pid": 4242, "pid_start": "1", "boot_id": "x",
              "started": "2026-01-01T00:00:00+00:00", "lease_s": lease_s, "token": "feedfeed",
              "renewed": time.time() - renewed_ago}  # fmt: skip
    path = folder / LOCK_FILE
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - renewed_ago, time.time() - renewed_ago))


def test_lease_of_another_host_is_refused_while_fresh_and_taken_over_after_expiry(tmp_path):
    write_foreign_lease(tmp_path, renewed_ago=1, lease_s=3)
    with pytest.raises(FolderLocked, match="host other-node, pid 4242"):
        folder_lock.acquire(tmp_path, lease_s=3)
    time.sleep(3.5)  # the other host stopped renewing: its lease expires
    lease = folder_lock.acquire(tmp_path, lease_s=3)
    try:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lease.release()


def test_holder_renews_its_lease_so_it_is_never_taken_over(tmp_path):
    first = start_holder(tmp_path, lease_s=1.2)  # renewed every 0.3 s
    try:
        assert first_line(first) == "held"
        before = json.loads((tmp_path / LOCK_FILE).read_text())["renewed"]
        time.sleep(2.5)  # two lease lengths
        after = json.loads((tmp_path / LOCK_FILE).read_text())
        assert after["renewed"] > before and after["pid"] == first.pid
        with pytest.raises(FolderLocked):
            folder_lock.acquire(tmp_path, lease_s=1.2)
    finally:
        first.communicate("\n", timeout=30)


def test_a_holder_whose_lease_was_taken_over_refuses_to_save(tmp_path):
    lease = folder_lock.acquire(tmp_path, lease_s=600)
    try:
        lease._stop.set()  # a holder that stalled: no renewals
        write_foreign_lease(tmp_path, renewed_ago=0, lease_s=600)  # another run took the folder over
        assert not lease.renew()
        with pytest.raises(CheckpointError, match="taken over by host other-node"):
            lease.assert_held()
    finally:
        lease.release()
    assert (tmp_path / LOCK_FILE).exists()  # release never removes another run's lease


def test_reentrant_in_one_process(tmp_path):
    lease = folder_lock.acquire(tmp_path, lease_s=30)
    try:
        assert folder_lock.acquire(tmp_path, lease_s=30) is lease
        assert folder_lock.held(tmp_path) is lease
    finally:
        lease.release()
    assert folder_lock.held(tmp_path) is None


RACER = """
import sys, time
from recipe.psft import folder_lock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    folder_lock.acquire(sys.argv[1], lease_s=30)
except folder_lock.FolderLocked:
    print("refused", flush=True)
    sys.exit(2)
print("held", flush=True)
time.sleep(2)
"""


def test_simultaneous_starts_exactly_one_wins(tmp_path):
    go = time.time() + 3
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(go)], cwd=REPO, stdout=subprocess.PIPE,
                         text=True)
        for _ in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["held", "refused", "refused", "refused"], outs


WRITER = """
import sys
from pathlib import Path
from recipe.psft.checkpoints import write_tracker
for i in range(int(sys.argv[2])):
    write_tracker(Path(sys.argv[1]), i)
"""


def test_concurrent_tracker_writes_never_fail_nor_leave_an_empty_tracker(tmp_path):
    """Per-process temporary names: two writers never share one (the review's unit variant, smaller)."""
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "300"], cwd=REPO, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]  # fmt: skip
    seen_empty = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                if (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "":
                    seen_empty.append(1)
            except FileNotFoundError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    errors = [w.communicate(timeout=120)[1] for w in writers]
    stop.set()
    watcher.join()
    assert [w.returncode for w in writers] == [0, 0], errors
    assert not seen_empty
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_write_temp_names_differ_between_hosts_sharing_a_pid(tmp_path, monkeypatch):
    names = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (names.append(Path(src).name), real_replace(src, dst)))
    atomic_write(tmp_path / "x", "1")
    atomic_write(tmp_path / "x", "2")
    assert len(set(names)) == 2  # same pid and thread, still two names
