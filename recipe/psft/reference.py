"""Reference (initial-model) log-probs of the training set: computed once, stored, reused.

The reference of SFT-KL / ASFT (and the old policy of ``psft.snapshot=initial``) is the frozen initial
model, so its log-probs on the demonstrations depend only on the data. One forward-only pass over
the training set before the first step (with the initial weights, through the worker group's
``infer_batch``) replaces a reference forward on every step of every epoch and a second model copy
in memory; ``benchmarks/reference_cost.py`` measures the pass against an SFT epoch.

The result is one safetensors file under ``trainer.default_local_dir/reference_log_probs/``, named by
a key over the model's identity, the tokenised data and the numerics that change log-probs. A run
that finds a file with its key (a resumed run, or a new run on the same model and data) loads it
instead of computing it again; anything else gets a new file. The pass always runs before a
checkpoint is loaded, so even a resumed run that lacks the file computes it with the initial weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import files

FORMAT_VERSION = 1


@dataclass
class ReferenceLogProbs:
    """Per-row log-probs (``values[offsets[i]:offsets[i + 1]]`` is row i, one per token, fp32)."""

    values: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, indices: list[int]) -> torch.Tensor:
        """The rows ``indices`` as a jagged nested tensor, the layout of the engine's log_probs."""
        return torch.nested.as_nested_tensor(
            [self.values[self.offsets[i] : self.offsets[i + 1]] for i in indices], layout=torch.jagged
        )

    @classmethod
    def from_rows(cls, rows: list[torch.Tensor]) -> ReferenceLogProbs:
        lengths = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64)
        return cls(torch.cat(rows).float() if rows else torch.zeros(0), lengths.cumsum(0))


def model_fingerprint(model_dir: str | Path) -> dict[str, Any]:
    """The model's identity: :func:`recipe.psft.files.model_fingerprint` (full sha256 of the weights, and of
    the tokenizer and configs, cached by size and mtime). Exact, because reusing log-probs of another
    model would be silent; moving or copying the folder keeps it."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {"path": str(model_dir)}  # a hub id or remote path verl resolves itself
    return files.model_fingerprint(model_dir)


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """Identity of the tokenised training rows (token ids and loss masks, in dataset order)."""
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        item = dataset[index]
        for key in ("input_ids", "loss_mask"):
            digest.update(item[key].to(torch.int64).numpy().tobytes())
        digest.update(b"|")
    return {"rows": len(dataset), "sha256": digest.hexdigest()}


def cache_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cache_file(root: str | Path, identity: dict[str, Any]) -> Path:
    return Path(root).expanduser() / "reference_log_probs" / f"{cache_key(identity)}.safetensors"


def save(path: Path, reference: ReferenceLogProbs, identity: dict[str, Any]) -> None:
    """Write atomically (:func:`recipe.psft.files.atomic_path`): a crash never leaves a half-written cache."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": str(FORMAT_VERSION), "identity": json.dumps(identity, sort_keys=True)}
    with files.atomic_path(path) as tmp:
        save_file({"values": reference.values.contiguous(), "offsets": reference.offsets}, str(tmp), metadata=metadata)


def load(path: Path, identity: dict[str, Any]) -> ReferenceLogProbs | None:
    """The cached log-probs if ``path`` holds them for exactly ``identity``, else None."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != str(FORMAT_VERSION):
            return None
        if json.loads(metadata.get("identity", "null")) != json.loads(json.dumps(identity, sort_keys=True)):
            return None
        return ReferenceLogProbs(handle.get_tensor("values"), handle.get_tensor("offsets"))


def reference_identity(config: Any, model_path: str, dataset: Any) -> dict[str, Any]:
    """What the reference log-probs depend on: the model, the tokenised rows and the engine's numerics."""
    from omegaconf import OmegaConf

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    engine = config.engine
    return {
        "model": model_fingerprint(model_path),
        "data": data_fingerprint(dataset),
        # What else changes the numbers: the engine's dtypes and the attention/padding path.
        "numerics": {
            "strategy": str(engine.get("strategy")),
            "model_dtype": str(engine.get("model_dtype")),
            "dtype": str(engine.get("dtype")),
            "mixed_precision": plain(engine.get("mixed_precision")),
            "use_remove_padding": bool(config.model.use_remove_padding),
            "override_config": plain(config.model.get("override_config")),
        },
    }


def load_or_compute(
    root: str | Path, identity: dict[str, Any], rows: int, chunk: int, log_probs_of: Any
) -> tuple[ReferenceLogProbs, float]:
    """The stored log-probs for ``identity`` under ``root``, else computed and stored; and the seconds
    the pass took (0 when loaded). ``log_probs_of(indices)`` returns one log-prob row per index."""
    import time

    from tqdm import tqdm

    path = cache_file(root, identity)
    cached = load(path, identity)
    if cached is not None:
        print(f"reference log-probs: reusing {path} ({len(cached)} rows)")
        return cached, 0.0
    start = time.perf_counter()
    result: list[torch.Tensor] = []
    for first in tqdm(range(0, rows, chunk), desc="reference log-probs"):
        result.extend(log_probs_of(list(range(first, min(rows, first + chunk)))))
    reference = ReferenceLogProbs.from_rows(result)
    save(path, reference, identity)
    seconds = time.perf_counter() - start
    print(f"reference log-probs: {len(result)} rows in {seconds:.1f} s, stored in {path}")
    return reference, seconds
