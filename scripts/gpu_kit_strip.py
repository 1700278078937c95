"""Repack wheels for the GPU kit: drop files a headless training host never reads, store uncompressed.

Used by ``scripts/gpu_kit.sh``. Each wheel is rewritten with

* the members matching ``DROP`` removed, and their lines removed from the wheel's ``RECORD`` (the
  remaining files are byte-identical, so their recorded hashes still hold and pip installs the wheel
  like any other);
* every member stored without compression (``ZIP_STORED``): the kit then compresses all wheels
  together with xz, which packs far tighter than zip's per-file deflate.

    python scripts/gpu_kit_strip.py WHEEL_DIR        # rewrites the wheels in place, prints what it saved
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import zipfile
from pathlib import Path

# (wheel name prefix, member regex): what cannot matter when training with Ray on a headless host.
DROP: list[tuple[str, re.Pattern[str]]] = [
    # Ray's Java runtime (Ray's Java API; Python workers never load it).
    ("ray-", re.compile(r"^ray/jars/")),
    # The dashboard's web front end (built JavaScript, CSS, source maps): only a browser reads it.
    ("ray-", re.compile(r"^ray/dashboard/client/")),
    # Test suites shipped inside packages.
    ("ray-", re.compile(r"(^|/)tests/")),
    # verl's wheel installs its own test suite as a top-level package named `tests`.
    ("verl-", re.compile(r"^tests/")),
    ("pydantic_core-", re.compile(r"(^|/)tests/")),
    # Type stubs and source maps anywhere.
    ("", re.compile(r"\.(map|pyi)$")),
]


def drop_patterns(wheel_name: str) -> list[re.Pattern[str]]:
    return [pattern for prefix, pattern in DROP if wheel_name.startswith(prefix)]


def repack(wheel: Path) -> tuple[int, int, int]:
    """Rewrite ``wheel`` in place; returns (members dropped, bytes of files dropped, bytes of files kept)."""
    patterns = drop_patterns(wheel.name)
    with zipfile.ZipFile(wheel) as source:
        infos = source.infolist()
        # The wheel's own RECORD sits at the top level (Ray vendors other packages' dist-info deeper down).
        record_name = next(
            (i.filename for i in infos if i.filename.endswith(".dist-info/RECORD") and i.filename.count("/") == 1),
            None,
        )
        if record_name is None:
            raise SystemExit(f"{wheel}: no .dist-info/RECORD member: not a wheel pip can install")
        dropped = {i.filename for i in infos if any(p.search(i.filename) for p in patterns)}
        dropped.discard(record_name)
        kept_rows = [
            row for row in csv.reader(io.StringIO(source.read(record_name).decode())) if row and row[0] not in dropped
        ]
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows(kept_rows)
        tmp = wheel.with_suffix(".tmp")
        kept_bytes = 0
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as target:
            for info in infos:
                if info.filename in dropped:
                    continue
                data = record.getvalue().encode() if info.filename == record_name else source.read(info)
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.external_attr = info.external_attr  # keeps executables (Ray's raylet, gcs_server) executable
                out.compress_type = zipfile.ZIP_STORED
                target.writestr(out, data)
                kept_bytes += len(data)
    tmp.replace(wheel)
    dropped_bytes = sum(i.file_size for i in infos if i.filename in dropped)
    return len(dropped), dropped_bytes, kept_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel_dir", type=Path)
    args = parser.parse_args()
    wheels = sorted(args.wheel_dir.glob("*.whl"))
    if not wheels:
        sys.exit(f"no wheels in {args.wheel_dir}")
    total_dropped = total_kept = 0
    for wheel in wheels:
        count, dropped, kept = repack(wheel)
        total_dropped += dropped
        total_kept += kept
        if count:
            print(f"  stripped {wheel.name}: {count} files, {dropped / 2**20:.1f} MiB")
    print(f"  stripped {total_dropped / 2**20:.1f} MiB in all; {total_kept / 2**20:.1f} MiB of files kept")


if __name__ == "__main__":
    main()
