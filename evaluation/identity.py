"""Which model a run evaluated: a content hash of its weights, tokenizer and chat template, and the
name results are filed under.

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
from pathlib import Path

from recipe.psft.files import FINGERPRINT_CACHE as CACHE_NAME
from recipe.psft.files import model_fingerprint

__all__ = ["CACHE_NAME", "grader_identity", "model_fingerprint", "model_label"]

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
