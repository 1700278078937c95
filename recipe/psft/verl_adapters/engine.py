"""What the trainer needs from verl's engine workers beyond their public calls.

* The data-parallel size of a worker group, from its private dispatch-info query.
* Token accuracy needs the full logits, which verl's FSDP engine never hands to a loss function.
  Its distillation hook does: with the non-tensor flag ``distillation_use_topk`` set on a batch, the
  engine calls the loss object once more per micro-batch as ``loss(student_logits=..., data=...)`` and
  merges the returned per-token tensors into ``model_output``. :class:`WithLogitsProbe` answers
  that call with :data:`~recipe.psft.losses.ARGMAX_HIT` and passes every other call to the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..losses import ARGMAX_HIT

# verl's FSDP engine: "call the loss object with the full logits" (meant for top-k distillation).
LOGITS_HOOK_FLAG = "distillation_use_topk"


def data_parallel_size(worker_group: Any) -> int:
    """Data-parallel size of a verl worker group (a remote call to every worker: ask once)."""
    return max(worker_group._query_dispatch_info("train")) + 1


def logits_hook_meta(enabled: bool) -> dict[str, bool]:
    """Non-tensor batch metadata that turns the engine's logits hook (token accuracy) on or off."""
    return {LOGITS_HOOK_FLAG: enabled}


def argmax_hits(logits: torch.Tensor, data: Any) -> torch.Tensor:
    """1.0 where the logits' argmax is the next token, per token of the packed micro-batch: (1, total_nnz)."""
    with torch.no_grad():
        labels = torch.roll(data["input_ids"].values(), shifts=-1, dims=0).to(logits.device)
        hit = (logits.squeeze(0).argmax(dim=-1) == labels).to(torch.float32)
    return hit.unsqueeze(0)


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
            return {ARGMAX_HIT: argmax_hits(student_logits, data)}
        return self.loss(model_output=model_output, data=data, dp_group=dp_group)
