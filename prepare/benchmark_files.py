"""``--benchmark-files NAME=PATH[,NAME=PATH...]``: a benchmark read from a local file in its Hub layout
(for clusters without Hub access) instead of the Hub.

The file is a parquet, JSONL or JSON export of the Hub split (e.g. ``datasets``' ``to_parquet`` /
``to_json``, or the Hub's own parquet file): same columns, same rows, so the output files are the same as
from the Hub. Every row's columns are checked when the options are read, before anything is downloaded or
converted; the data card names each file and its sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prepare import hub
from recipe.psft.files import file_sha256
from recipe.psft.rows import DataError, listing, read_records

FORMATS = (".parquet", ".jsonl", ".ndjson", ".json")


@dataclass
class LocalBenchmark:
    """One benchmark's rows read from a local file."""

    name: str
    path: Path
    sha256: str
    rows: list[tuple[int, dict[str, Any]]]  # (row number in the file, from 1; the row)

    def card(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256, "layout_of": hub.BENCHMARKS[self.name].source}


def parse_spec(value: str | None) -> dict[str, Path]:
    """'aime24=a.parquet,gpqa_diamond=/x/g.jsonl' -> {name: path}; unknown names and repeats are errors."""
    if not value:
        return {}
    files: dict[str, Path] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise DataError(f"--benchmark-files: {item!r} is not NAME=PATH")
        if name not in hub.BENCHMARKS:
            raise DataError(f"--benchmark-files: unknown benchmark {name!r}; choose from {list(hub.BENCHMARKS)}")
        if name in files:
            raise DataError(f"--benchmark-files: {name} is given twice")
        files[name] = Path(path).expanduser()
    return files


def missing_columns(row: Any, groups: list[tuple[str, ...]]) -> list[str]:
    """The needed columns ``row`` lacks (each group: one of its names must be present)."""
    if not isinstance(row, dict):
        return ["<row: expected an object>"]
    return [" or ".join(group) for group in groups if not any(k in row for k in group)]


def read(name: str, path: Path) -> LocalBenchmark:
    """Read and check ``path`` as benchmark ``name``'s Hub layout; DataError naming file, rows and columns."""
    bench = hub.BENCHMARKS[name]
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"{path}: --benchmark-files reads {', '.join(FORMATS)} files, not {path.suffix!r}")
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no rows (expected {name}'s rows in the layout of {bench.source})")
    groups = bench.required_columns()
    bad = [f"row {n}: missing column(s) {m}" for n, row in records if (m := missing_columns(row, groups))]
    if bad:
        expected = [" or ".join(g) for g in groups]
        title = f"{path}: {len(bad)} row(s) are not in {name}'s Hub layout ({bench.source}; needs {expected})"
        raise DataError(listing(title, bad, 10))
    return LocalBenchmark(name, path, file_sha256(path), [(n, dict(row)) for n, row in records])


def read_all(spec: dict[str, Path], selected: list[str]) -> dict[str, LocalBenchmark]:
    """Every file of ``spec``; a file for a benchmark not selected by --benchmarks is an error."""
    unused = [n for n in spec if n not in selected]
    if unused:
        raise DataError(f"--benchmark-files: {unused} not selected by --benchmarks (selected: {selected or 'none'})")
    return {name: read(name, path) for name, path in spec.items()}
