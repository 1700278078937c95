"""What defines a run, recorded in every checkpoint and compared before a resume (before Ray starts).

``resume_mode: auto`` resumes whatever checkpoint is in ``trainer.default_local_dir``. If the model,
the training data or a setting that shapes the updates changed since that checkpoint was written, a
resume would mix two runs (old weights, optimizer and loader position under a new setting). Each
checkpoint therefore records :func:`run_identity` of its config, and :func:`check_resume` refuses a
resume that changes any of it, naming every changed key with both values, unless the key is listed in
``psft.resume_allow_changes``.

The same check runs when the checkpoint is already at the configured end: rerunning a finished run
with another setting (a second lr of a sweep under the same experiment name) is refused, not answered
"nothing to do".

The identity covers the optimizer (lr, schedule, warm-up, weight decay, betas, gradient clip), the
training data (each file's content hash, ``data.train_max_samples``, the columns, the chat-template
kwargs; the chat template itself is part of ``model.weights``, the model folder's tokenizer files),
the loss (mode, aggregation, clip range, snapshot, KL coefficient and estimator) and the world size.
To change one of them on purpose (e.g. lower the lr mid-run), list it in ``psft.resume_allow_changes``.

Deliberately *not* part of the identity (always free to change at resume): the number of steps or
epochs (extending a run), logging, validation files and frequency, save frequency and retention, and
micro-batching (it does not change the maths, except under ``psft.loss_agg_mode=micro-token-mean``,
the original's rule, where it moves the per-token weights: change it there only on purpose).
Checkpoints of earlier versions that lack a key are not compared on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import files
from .exit_codes import ResumeMismatch

# Config keys copied as they are (after resolution). Files and the model are fingerprinted below.
PLAIN_KEYS = (
    "data.train_batch_size",
    "psft.mini_batch_size",
    "psft.epochs",
    "psft.loss_mode",
    "psft.loss_agg_mode",
    "psft.clip_ratio_low",
    "psft.clip_ratio_high",
    "psft.sft_warmup_steps",
    "psft.shuffle_mini_batches",
    "psft.snapshot",
    "psft.kl_coef",
    "psft.kl_estimator",
    "data.max_length",
    "data.truncation",
    "data.prompt_key",
    "data.response_key",
    "data.messages_key",
    "data.train_max_samples",
    "data.apply_chat_template_kwargs",
    "model.override_config",
    "optim.optimizer",
    "optim.lr",
    "optim.lr_scheduler_type",
    "optim.warmup_style",
    "optim.lr_warmup_steps",
    "optim.lr_warmup_steps_ratio",
    "optim.min_lr_ratio",
    "optim.num_cycles",
    "optim.weight_decay",
    "optim.betas",
    "optim.clip_grad",
    "optim.override_optimizer_config",
    "trainer.seed",
)
DERIVED_KEYS = ("model.path", "model.weights", "data.train_files", "data.train_files.sha256", "trainer.world_size")
IDENTITY_KEYS = PLAIN_KEYS + DERIVED_KEYS

# model.weights recorded by checkpoints of earlier versions (16 sampled chunks per file): not comparable
# with the full hash, so not compared.
_LEGACY_WEIGHTS = "sha256-sampled:"


def model_fingerprint(model_path: str) -> str:
    """``model.weights``: :func:`recipe.psft.files.model_fingerprint` of a local model folder (full sha256
    of the weights, and of the tokenizer and configs, cached by size and mtime); Hub ids and URLs by name."""
    path = Path(os.path.expanduser(model_path))
    if not path.is_dir():
        return f"not a local folder: {model_path}"
    try:
        fingerprint = files.model_fingerprint(path)
    except FileNotFoundError:
        return f"no weight files in {model_path}"
    return f"sha256:{fingerprint['weights_sha256'][:32]} tokenizer+config sha256:{fingerprint['tokenizer_sha256'][:16]}"


def _select(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return None
    return node


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def _train_files(config: Any) -> list[str]:
    files = _select(config, "data.train_files")
    if files is None:
        return []
    files = [files] if isinstance(files, str) else [str(f) for f in files]
    return [f if "://" in f else str(Path(os.path.expanduser(f)).resolve()) for f in files]


def run_identity(config: Any) -> dict[str, Any]:
    """The values that define a run (see the module docstring), as plain JSON types."""
    identity: dict[str, Any] = {key: _plain(_select(config, key)) for key in PLAIN_KEYS}
    model_path = str(_select(config, "model.path"))
    local_model = Path(os.path.expanduser(model_path))
    identity["model.path"] = str(local_model.resolve()) if local_model.exists() else model_path
    identity["model.weights"] = model_fingerprint(model_path)
    train_files = _train_files(config)
    identity["data.train_files"] = train_files
    identity["data.train_files.sha256"] = [
        files.file_sha256(f) if "://" not in f and Path(f).is_file() else "unavailable" for f in train_files
    ]
    identity["trainer.world_size"] = int(_select(config, "trainer.nnodes") or 1) * int(
        _select(config, "trainer.n_gpus_per_node") or 1
    )
    return identity


def identity_changes(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (recorded value, current value)} for every identity key whose value differs."""
    return {
        key: (recorded.get(key), current.get(key))
        for key in IDENTITY_KEYS
        if key in recorded
        and recorded.get(key) != current.get(key)
        and not (key == "model.weights" and str(recorded.get(key)).startswith(_LEGACY_WEIGHTS))
    }


def check_resume(
    recorded: dict[str, Any] | None, current: dict[str, Any], allowed: list[str], checkpoint: str
) -> list[str]:
    """Raise ResumeMismatch if the run identity changed outside ``allowed``; return the allowed changes.

    ``recorded`` is None for checkpoints written before identities were recorded: nothing to compare.
    """
    unknown = sorted(set(allowed) - set(IDENTITY_KEYS))
    if unknown:
        raise ResumeMismatch(
            f"psft.resume_allow_changes lists {unknown}, which are not run-identity keys; "
            f"valid keys: {', '.join(IDENTITY_KEYS)}"
        )
    if recorded is None:
        return []
    changes = identity_changes(recorded, current)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        lines = "\n".join(
            f"  {key}: checkpoint has {old!r}, this run has {new!r}" for key, (old, new) in refused.items()
        )
        keys = ",".join(refused)
        raise ResumeMismatch(
            f"the checkpoint to resume ({checkpoint}) belongs to a run with different settings:\n{lines}\n"
            f"Resuming would mix two runs (and if that run is finished, this is another run, not a rerun of it). "
            f"Use a new trainer.default_local_dir (or experiment name) for a new run, "
            f"pass trainer.resume_mode=disable to start from scratch here, or accept the change with "
            f"psft.resume_allow_changes=[{keys}]"
        )
    return sorted(changes)
