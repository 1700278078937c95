"""The output folder of one evaluation run: ``run.json`` (what was run) and ``samples.jsonl`` (one row
per sample, appended and fsynced per finished problem, so a crash or Ctrl-C keeps finished work).

A rerun reads the rows back and generates only missing (problem_id, sample_index) pairs. It refuses a
folder written with another model, other sampling settings or another test file: mixing them would
make a number that belongs to no configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"


class RunMismatch(RuntimeError):
    """The output folder belongs to a run with different settings."""


def sample_key(problem_id: Any, sample_index: int) -> tuple[str, int]:
    # JSON round-trips ints and strings alike, so ids are compared by their JSON text.
    return json.dumps(problem_id), int(sample_index)


class RunStore:
    """Append-only sample rows plus the run's fingerprint, in ``out_dir``."""

    def __init__(self, out_dir: str | Path, fingerprint: dict[str, Any], info: dict[str, Any] | None = None):
        self.dir = Path(out_dir)
        self.fingerprint = fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
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
                    "Use another --output folder (or delete this one) to start a new run."
                )
        else:
            tmp = run_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, **(info or {})}, indent=2) + "\n")
            os.replace(tmp, run_path)
        self.samples_path = self.dir / SAMPLES_FILE
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Drop a half-written last line (a crash mid-write) so appends stay one JSON object per line."""
        if not self.samples_path.exists():
            return
        data = self.samples_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.samples_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def rows(self) -> list[dict[str, Any]]:
        """All rows ever written, in order (errored attempts included)."""
        if not self.samples_path.exists():
            return []
        out = []
        with open(self.samples_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
        return out

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
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.dir / SUMMARY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, path)
        return path
