"""What the trainer needs from verl's engine workers beyond their public calls.

* The data-parallel size of a worker group, from its private dispatch-info query.
* Token accuracy and entropy need the full logits, which verl's FSDP engine never hands to a loss
  function. Its distillation hook does: with the non-tensor flag ``distillation_use_topk`` set on a
  batch, the engine calls the loss object once more per micro-batch as ``loss(student_logits=...,
  data=...)`` and merges the returned per-token tensors into ``model_output``. :class:`WithLogitsProbe`
  answers that call with :data:`~recipe.psft.token_metrics.ARGMAX_HIT` and
  :data:`~recipe.psft.token_metrics.PROBE_ENTROPY`, computed without gradients (verl's own
  ``calculate_entropy`` would keep a vocabulary-sized tensor in a training forward's graph), and
  passes every other call to the loss.
* The non-tensor keys a batch carries into ``train_batch`` / ``infer_batch`` (:func:`batch_meta`,
  :func:`train_meta`, :func:`probe_meta`), and the data-parallel balancing of a mini-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..token_metrics import ARGMAX_HIT, CLIPPED_TOKEN_FLAG, PROBE_ENTROPY, entropy_and_argmax_hit

# verl's FSDP engine: "call the loss object with the full logits" (meant for top-k distillation).
LOGITS_HOOK_FLAG = "distillation_use_topk"


def data_parallel_size(worker_group: Any) -> int:
    """Data-parallel size of a verl worker group (a remote call to every worker: ask once)."""
    return max(worker_group._query_dispatch_info("train")) + 1


def logits_hook_meta(enabled: bool) -> dict[str, bool]:
    """Non-tensor batch metadata that turns the engine's logits hook (token accuracy) on or off."""
    return {LOGITS_HOOK_FLAG: enabled}


def batch_meta(config: Any, pad_token_id: int) -> dict[str, Any]:
    """What every batch tells the engine: padding layout and sampling temperature (1: plain log-probs)."""
    return {
        "use_remove_padding": config.model.use_remove_padding,
        "temperature": 1.0,
        "pad_mode": config.data.pad_mode,
        "pad_token_id": pad_token_id,
    }


def train_meta(config: Any, pad_token_id: int) -> dict[str, Any]:
    """What a ``train_batch`` call adds: micro-batching and the mini-batch size the loss divides by."""
    return {
        **batch_meta(config, pad_token_id),
        "use_dynamic_bsz": config.data.use_dynamic_bsz,
        "max_token_len_per_gpu": config.data.max_token_len_per_gpu,
        "micro_batch_size_per_gpu": config.data.micro_batch_size_per_gpu,
        "global_batch_size": config.psft.mini_batch_size,
        # Token metrics come from the no-grad logits probe (see probe_meta), never from verl's
        # calculate_entropy, which would keep a vocabulary-sized tensor in the training graph.
        "calculate_entropy": False,
        # The PSFT loss's per-micro-batch clipped-token summary (read per step: benchmarks toggle it).
        CLIPPED_TOKEN_FLAG: bool(config.psft.get("clipped_token_log", True)),
    }


def probe_meta(on: bool, fused_kernels: bool) -> dict[str, Any]:
    """Switch the no-grad logits probe (entropy, token accuracy) of a forward on or off. Fused kernels
    never materialise logits: there a forward-only pass computes entropy instead (``calculate_entropy``)."""
    return {**logits_hook_meta(on and not fused_kernels), "calculate_entropy": False}


def balanced_order(indices: torch.Tensor, seqlens: list[int], dp_size: int) -> torch.Tensor:
    """Reorder a mini-batch's rows so each data-parallel rank gets a similar token workload."""
    from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

    workload = calculate_workload(torch.tensor([seqlens[i] for i in indices.tolist()], dtype=torch.float32))
    partitions = get_seqlen_balanced_partitions(workload, k_partitions=dp_size, equal_size=True)
    return indices[torch.tensor([j for part in partitions for j in sorted(part)])]


def token_probe(logits: torch.Tensor, data: Any) -> dict[str, torch.Tensor]:
    """Per token of the packed micro-batch, shaped (1, total_nnz) as the hook expects: 1.0 where the
    logits' argmax is the next token, and the entropy of the next-token distribution (no grad).

    Computed where the next token is a demonstration token (the shifted loss mask, as the loss reads
    it), 0 elsewhere: every consumer averages these over demonstration tokens only.
    """
    labels = torch.roll(data["input_ids"].values(), shifts=-1, dims=0).to(logits.device)
    mask = None
    if "loss_mask" in data.keys():
        mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0).to(logits.device)
    entropy, hit = entropy_and_argmax_hit(logits.squeeze(0), labels, mask)
    return {ARGMAX_HIT: hit.unsqueeze(0), PROBE_ENTROPY: entropy.unsqueeze(0)}


@dataclass(frozen=True)
class WithLogitsProbe:
    """A loss with verl's engine signature that also answers the engine's logits hook."""

    loss: Callable[..., Any]

    def __call__(
        self,
        model_output: dict | None = None,
        data: Any = None,
        dp_group: Any = None,
        student_logits: torch.Tensor | None = None,
    ):
        if student_logits is not None:
            return token_probe(student_logits, data)
        return self.loss(model_output=model_output, data=data, dp_group=dp_group)
