"""Which model a run evaluated: a content hash of its weights, tokenizer and chat template, and the
name results are filed under.

verl saves every checkpoint as ``<experiment>/global_step_N/huggingface``: the folder's basename says
nothing, so names are built from the path (``<experiment>/global_step_N``). A model retrained in place
keeps its path, so the run fingerprint holds the hash of the files instead.

Hashing a 15 GB checkpoint takes a while, so the result is cached beside the model in
``.psft_fingerprint.json``, keyed by each file's size and modification time: unchanged files are never
read twice. When the model folder is read-only, the cache goes under ``$XDG_CACHE_HOME/psft``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

CACHE_NAME = ".psft_fingerprint.json"
CACHE_VERSION = 1
CHUNK = 8 << 20
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
_STEP_DIR = re.compile(r"^global_step_\d+$")


def model_label(path: str) -> str:
    """The name a model's results are filed and served under.

    ``runs/psft/global_step_40/huggingface`` -> ``psft/global_step_40``; ``.../global_step_40`` ->
    ``psft/global_step_40``; any other folder -> its basename; a Hub id (``Qwen/Qwen2.5-7B``) stays as is.
    """
    text = path.rstrip("/")
    p = Path(text)
    parts = list(p.parts)
    if parts and parts[-1] == "huggingface":
        parts = parts[:-1]
    if parts and _STEP_DIR.match(parts[-1]):
        return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]
    if not p.exists() and len(parts) == 2 and not text.startswith((".", "/")):
        return text  # a Hub id
    return p.name or "model"


def _files_to_hash(folder: Path) -> list[Path]:
    files = [f for f in sorted(folder.iterdir()) if f.is_file()]
    return [f for f in files if f.name in TOKENIZER_FILES or f.name.endswith(WEIGHT_SUFFIXES)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _cache_paths(folder: Path) -> list[Path]:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "psft" / "fingerprints"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return [folder / CACHE_NAME, base / f"{key}.json"]


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
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            return
        except OSError:
            continue  # read-only model folder: fall back to the user cache


def model_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"weights_sha256": ..., "tokenizer_sha256": ..., "files": N}`` for a local model folder.

    Each file's sha256 is cached by (size, mtime_ns); the two digests combine the per-file hashes with
    the file names. Raises FileNotFoundError for a folder without weight files.
    """
    folder = Path(path)
    files = _files_to_hash(folder)
    weights = [f for f in files if f.name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        raise FileNotFoundError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to fingerprint")
    cached = _read_cache(folder)
    fresh: dict[str, Any] = {}
    for f in files:
        st = f.stat()
        entry = cached.get(f.name)
        if not (entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns):
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(f)}
        fresh[f.name] = entry
    if fresh != cached:
        _write_cache(folder, fresh)

    def combine(names: list[str]) -> str:
        h = hashlib.sha256()
        for name in sorted(names):
            h.update(f"{name}\0{fresh[name]['sha256']}\n".encode())
        return h.hexdigest()

    return {
        "weights_sha256": combine([f.name for f in weights]),
        "tokenizer_sha256": combine([f.name for f in files if f not in weights]),
        "weight_bytes": sum(f.stat().st_size for f in weights),
    }


def grader_identity() -> dict[str, str]:
    """The grader's version and that of math-verify, which decides equivalence."""
    from importlib import metadata

    from evaluation.grader import GRADER_VERSION

    try:
        mv = metadata.version("math-verify")
    except metadata.PackageNotFoundError:
        mv = "not installed"
    return {"grader_version": GRADER_VERSION, "math_verify": mv}
