"""The output folder of one evaluation run: ``run.json`` (what was run) and ``samples.jsonl`` (one row
per sample, appended and fsynced per finished problem, so a crash or Ctrl-C keeps finished work).

A rerun reads the rows back and generates only missing (problem_id, sample_index) pairs. It refuses a
folder written with another model (weights included), other sampling settings, another grader or another
test file: mixing them would make a number that belongs to no configuration.

One process writes a folder at a time: ``.lock`` is held with ``flock`` (released by the kernel when the
holder dies, so a crash never leaves a stale lock) and names its holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from recipe.psft.files import atomic_write

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"


class RunMismatch(RuntimeError):
    """The output folder belongs to a run with different settings."""


class RunLocked(RuntimeError):
    """Another process is writing this output folder."""


class CorruptSamples(RuntimeError):
    """samples.jsonl has a line that is not a sample row somewhere before its last line."""


def _fingerprint_text(fp: dict[str, Any]) -> str:
    return "\n".join(f"    {k}: {fp[k]!r}" for k in sorted(fp))


_SECRET_FLAGS = ("--api-key", "--api_key")
_URL_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redacted_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--api-key`` and credentials inside URLs (``user:pass@``) replaced by
    ``***``: the lock file is readable by other users and shown to the next writer."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS:
            out.append(f"{flag}=***" if eq else arg)
            hide_next = not eq
            continue
        out.append(_URL_USERINFO.sub(r"\1***@", arg))
    return out


def sample_key(problem_id: Any, sample_index: int) -> tuple[str, int]:
    # JSON round-trips ints and strings alike, so ids are compared by their JSON text.
    return json.dumps(problem_id), int(sample_index)


class RunStore:
    """Append-only sample rows plus the run's fingerprint, in ``out_dir``."""

    def __init__(self, out_dir: str | Path, fingerprint: dict[str, Any], info: dict[str, Any] | None = None):
        self.dir = Path(out_dir)
        self.fingerprint = fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self._append_lock = threading.Lock()
        self._lock_fd = self._acquire_lock()
        try:
            self._check_or_write_run(fingerprint, info)
            self.samples_path = self.dir / SAMPLES_FILE
            self._repair_tail()
        except BaseException:
            self.close()
            raise

    def _acquire_lock(self) -> int:
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise RunLocked(
                f"{self.dir} is being written by another evaluation ({holder}). Wait for it to finish, stop it, "
                "or use another --output folder."
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(redacted_argv(sys.argv))[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return fd

    def close(self) -> None:
        """Release the folder's lock (also released by the kernel when the process ends)."""
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_or_write_run(self, fingerprint: dict[str, Any], info: dict[str, Any] | None) -> None:
        run_path = self.dir / RUN_FILE
        if run_path.exists():
            old = json.loads(run_path.read_text()).get("fingerprint", {})
            diff = {
                k: (old.get(k), fingerprint.get(k))
                for k in set(old) | set(fingerprint)
                if old.get(k) != fingerprint.get(k)
            }
            if diff:
                lines = "\n".join(f"  {k}: was {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
                raise RunMismatch(
                    f"{self.dir} holds a run with different settings:\n{lines}\n"
                    f"  fingerprint in {run_path}:\n{_fingerprint_text(old)}\n"
                    f"  fingerprint of this run:\n{_fingerprint_text(fingerprint)}\n"
                    "Use another --output folder (or delete this one) to start a new run."
                )
        else:
            atomic_write(run_path, json.dumps({"fingerprint": fingerprint, **(info or {})}, indent=2) + "\n")

    def _repair_tail(self) -> None:
        """Drop a half-written last line (a crash mid-write) so appends stay one JSON object per line."""
        if not self.samples_path.exists():
            return
        data = self.samples_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.samples_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def rows(self) -> list[dict[str, Any]]:
        """All rows ever written, in order (errored attempts included).

        Only the last line can be half-written by a crash (and is dropped on open); a bad line before it
        means the file was edited or damaged, and is reported with its number and the way to repair it.
        """
        if not self.samples_path.exists():
            return []
        out = []
        with open(self.samples_path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise self._corrupt(lineno, line, f"not valid JSON ({e})") from None
                if not isinstance(row, dict) or "problem_id" not in row or "sample_index" not in row:
                    raise self._corrupt(lineno, line, "not a sample row (needs problem_id and sample_index)")
                out.append(row)
        return out

    def _corrupt(self, lineno: int, line: str, why: str) -> CorruptSamples:
        path = self.samples_path
        return CorruptSamples(
            f"{path}:{lineno}: {why}: {line.strip()[:120]!r}\n"
            f"Only a crash's half-written last line is repaired automatically. To keep every other sample, "
            f"delete line {lineno} (e.g. `sed -i '{lineno}d' {path}`) and rerun the same command: the samples "
            "of that line are generated again."
        )

    def latest(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The row that counts per (problem, sample): a successful one if any, else the last error."""
        best: dict[tuple[str, int], dict[str, Any]] = {}
        for row in self.rows():
            key = sample_key(row["problem_id"], row["sample_index"])
            prev = best.get(key)
            if prev is None or prev.get("error") is not None:
                best[key] = row  # a success replaces an error; a later error replaces an earlier one
        return best

    def finished(self) -> set[tuple[str, int]]:
        """Samples that need no more work: generated and graded without error."""
        return {k for k, row in self.latest().items() if row.get("error") is None}

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write rows durably (flush + fsync) before returning."""
        if not rows:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        # One writer thread at a time: buffered writes of long rows could otherwise interleave.
        with self._append_lock, open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.dir / SUMMARY_FILE
        atomic_write(path, json.dumps(summary, indent=2) + "\n")
        return path
