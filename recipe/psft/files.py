"""The file rules the recipe and its tools share, each defined once: a file's content hash, an atomic
write, and a model folder's fingerprint.

Used by the run identity (``run_identity.py``), checkpoints (``checkpoints.py``), the reference log-prob
cache (``reference.py``) and ``evaluation/`` (run fingerprint, test-file hash, ``run.json``,
``summary.json``, the accuracy log).

**Atomic write**: the data goes to a temporary file beside the target (named by process, thread and a
random token, so concurrent writers never share one, also processes with one pid on two hosts of a
shared filesystem), which is fsynced and renamed onto the target; then the folder is
fsynced. A reader sees the old content or all of the new, also after a crash.

**Model fingerprint**: the full sha256 of every file that decides the model's outputs (weights, and the
tokenizer, chat template and configs), combined with the file names into ``weights_sha256`` and
``tokenizer_sha256``. Each file's hash is cached by (size, mtime) in ``.psft_fingerprint.json`` beside
the model (``$XDG_CACHE_HOME/psft/fingerprints`` when the folder is read-only), so a file is read once;
a hash taken less than :data:`RACY_NS` after the file's last modification is recomputed on the next call
(a rewrite within the file system's timestamp granularity keeps the mtime; this is git's "racy clean"
rule).

Why full hashes everywhere rather than samples of each file: the three users need the same answer to
"same model?". Evaluation files results under it; the reference cache reuses log-probs computed by the
model it names, so a false match silently trains against another model's log-probs; a resume compares
it to refuse mixing two runs. A sample (first and last MiB, or 16 chunks of 64 KiB) misses a fine-tune
that changed only some tensors (a merged adapter, a retrained head). The cost is one read of the
weights per model folder (about 8 s per GiB on a 2-core VM, ``benchmarks/fingerprint_cost.py``), then a
fraction of a millisecond.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK = 8 << 20
FINGERPRINT_CACHE = ".psft_fingerprint.json"
CACHE_VERSION = 1
RACY_NS = 2_000_000_000  # a hash this close after a file's mtime is not trusted by the cache
# What decides the model's outputs besides the weights: tokenizer, chat template, configs.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "config.json",
    "generation_config.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed onto ``path`` when the block ends
    without an error (after an fsync; the folder is fsynced too), removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_native_id()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent, directory=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) so that ``path`` holds its old content or all of the new."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def _cache_paths(folder: Path) -> list[Path]:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "psft" / "fingerprints"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return [folder / FINGERPRINT_CACHE, base / f"{key}.json"]


def _read_cache(folder: Path) -> dict[str, Any]:
    for path in _cache_paths(folder):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict):
            return data["files"]
    return {}


def _write_cache(folder: Path, files: dict[str, Any]) -> None:
    text = json.dumps({"version": CACHE_VERSION, "files": files}, indent=1, sort_keys=True) + "\n"
    for path in _cache_paths(folder):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text)
            return
        except OSError:
            continue  # read-only model folder: fall back to the user cache


def _cached_entry(entry: Any, st: os.stat_result) -> bool:
    if not (isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns):
        return False
    hashed = entry.get("hashed_ns")
    return hashed is None or hashed - st.st_mtime_ns >= RACY_NS


def model_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"weights_sha256", "tokenizer_sha256", "weight_bytes"}`` of a local model folder (its top-level
    files, the ones Hugging Face loads; see the module docstring). Raises FileNotFoundError for a folder
    without weight files."""
    folder = Path(path)
    files = [f for f in sorted(folder.iterdir()) if f.is_file()]
    files = [f for f in files if f.name in TOKENIZER_FILES or f.name.endswith(WEIGHT_SUFFIXES)]
    weights = [f for f in files if f.name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        raise FileNotFoundError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to fingerprint")
    cached = _read_cache(folder)
    fresh: dict[str, Any] = {}
    for f in files:
        st = f.stat()
        entry = cached.get(f.name)
        if not _cached_entry(entry, st):
            hashed_ns = time.time_ns()
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(f), "hashed_ns": hashed_ns}
        fresh[f.name] = entry
    if fresh != cached:
        _write_cache(folder, fresh)

    def combine(names: list[str]) -> str:
        digest = hashlib.sha256()
        for name in sorted(names):
            digest.update(f"{name}\0{fresh[name]['sha256']}\n".encode())
        return digest.hexdigest()

    return {
        "weights_sha256": combine([f.name for f in weights]),
        "tokenizer_sha256": combine([f.name for f in files if f not in weights]),
        "weight_bytes": sum(f.stat().st_size for f in weights),
    }
