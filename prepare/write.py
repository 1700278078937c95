"""Deterministic parquet writing of the trainer's rows, and a hash of their content."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recipe.psft import files, rows

# One fixed schema for every file: pyarrow would otherwise infer types row by row, and an all-empty
# column (or a different dict order) would change the bytes written.
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        (rows.DATA_SOURCE, pa.string()),
        (rows.PROMPT, pa.list_(MESSAGE_TYPE)),
        (rows.DEMONSTRATION, pa.string()),
        (rows.ABILITY, pa.string()),
        (rows.REWARD_MODEL, pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        (rows.EXTRA_INFO, pa.struct([("split", pa.string()), ("index", pa.int64()), ("source_row", pa.int64())])),
    ]
)


def write_parquet(table_rows: list[dict[str, Any]], path: Path) -> str:
    """Write rows with the fixed schema and return the file's sha256.

    No timestamps or pandas metadata go in, and the file is written in one row group, so the same rows give
    byte-identical files. Written to a temporary name first so a crash never leaves a half file behind.
    """
    table = pa.Table.from_pylist(table_rows, schema=SCHEMA)
    with files.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, len(table_rows)), write_statistics=False)
    return files.file_sha256(path)


def content_hash(files: dict[str, list[dict[str, Any]]]) -> str:
    """sha256 of the rows themselves (canonical JSON), stable across pyarrow versions unlike the file bytes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        for row in files[name]:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()
