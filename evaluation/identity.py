"""Which model a run evaluated: a content hash of its weights, tokenizer and chat template, and the
name results are filed under; and the grader's version.

verl saves every checkpoint as ``<experiment>/global_step_N/huggingface``: the folder's basename says
nothing, so names are built from the path (``<experiment>/global_step_N``). A model retrained in place
keeps its path, so the run fingerprint holds the hash of the files instead.

The fingerprint is :func:`recipe.psft.files.model_fingerprint`, the one the trainer's run identity and
reference cache use: a full sha256 per file, cached beside the model in ``.psft_fingerprint.json`` by
size and modification time (``$XDG_CACHE_HOME/psft`` when the folder is read-only), so a 15 GB
checkpoint is read once.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from evaluation.data import DataError
from recipe.psft.files import FINGERPRINT_CACHE as CACHE_NAME
from recipe.psft.files import model_fingerprint

__all__ = ["CACHE_NAME", "grader_identity", "model_fingerprint", "model_identity", "model_label", "served_root"]

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


def grader_identity() -> dict[str, str]:
    """The grader's version and that of math-verify, which decides equivalence."""
    from importlib import metadata

    from evaluation.grader import GRADER_VERSION

    try:
        mv = metadata.version("math-verify")
    except metadata.PackageNotFoundError:
        mv = "not installed"
    return {"grader_version": GRADER_VERSION, "math_verify": mv}


def served_root(base_url: str, model: str, api_key: str | None) -> str | None:
    """The path the server loaded ``model`` from (vLLM reports it as ``root`` in /v1/models), or None."""
    import httpx

    from evaluation.serve_client import chat_url

    url = chat_url(base_url).rsplit("/chat/completions", 1)[0] + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        data = httpx.get(url, timeout=10, headers=headers, trust_env=False).json()
        for entry in data.get("data", []):
            if entry.get("id") == model and isinstance(entry.get("root"), str):
                return entry["root"]
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return None


def model_identity(
    backend: str, model: str, model_path: str | None, base_url: str, api_key: str | None
) -> tuple[dict[str, Any], str]:
    """(the model part of a run's fingerprint, the label results are filed under) for ``--backend``,
    ``--model`` and ``--model-path``; with the serve backend and no model path, the server is asked."""
    path = model if backend == "vllm" else model_path
    if path is None and backend == "serve":
        path = served_root(base_url, model, api_key)
    if path is not None and Path(path).is_dir():
        try:
            ident = model_fingerprint(path)
        except FileNotFoundError as e:
            raise DataError(str(e)) from e
        return ident, (model_label(path) if backend == "vllm" or model_path else model_label(model))
    if model_path is not None:
        raise DataError(f"--model-path {model_path}: not a folder")
    if backend == "vllm" and "/" in model and not Path(model).exists():
        raise DataError(f"--model {model}: no such folder (a Hub id cannot be fingerprinted; download it first)")
    print(
        f"[eval] warning: the weights of {model!r} cannot be fingerprinted (pass --model-path FOLDER); "
        "a model retrained in place would not be noticed",
        file=sys.stderr,
    )
    return {"weights_sha256": None}, model_label(model)
