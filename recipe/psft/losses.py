"""PSFT, SFT and DFT token losses for verl's engine workers.

PSFT (arXiv 2508.17784) reads SFT as a policy gradient with advantage A = +1 on every demonstration
token and adds PPO's trust region. With r = pi_theta(y_t) / pi_old(y_t) (pi_old: the frozen snapshot
taken at the start of the training step),

    L_psft = - mean over loss tokens of  min(r, clip(r, 1 - eps_low, 1 + eps_high))

Because A > 0 only the upper clip binds: a token with r > 1 + eps_high contributes no gradient; any
other token gets -r * grad log p. At r = 1 this is exactly SFT's gradient.

    L_sft  = - mean log p(y_t)                       (negative log-likelihood)
    L_dft  = - mean sg(p(y_t)) * log p(y_t)          (Dynamic Fine-Tuning, Wu et al. 2025)

Every mean is over the loss tokens of the whole mini-batch on all data-parallel ranks (verl's
``batch_num_tokens``), so the gradient does not depend on how a mini-batch is cut into micro-batches
or ranks. The engine sums the micro-batch losses and averages gradients over ranks, hence the
``* dp_size`` below, exactly as verl's own ``sft_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

LOSS_MODES = ("psft", "sft", "dft")

# How the driver reduces each per-micro-batch metric over micro-batches, ranks and mini-batches.
# "sum": values are already divided by the global token count, so their sum is the global mean.
METRIC_REDUCTION = {"ratio_max": "max", "ratio_min": "min"}

# Optional per-token input of the loss, in ``model_output``: 1.0 where the logits' argmax is the next
# token (filled by the engine's logits hook, see verl_adapters/engine.py); gives the token_acc metric.
ARGMAX_HIT = "argmax_hit"


def psft_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip_ratio_low: float, clip_ratio_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PSFT objective min(r, clip(r, 1 - eps_low, 1 + eps_high)) and the ratio r."""
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    return torch.minimum(ratio, clipped), ratio


@dataclass(frozen=True)
class TokenLoss:
    """A loss with verl's engine signature ``(model_output, data, dp_group) -> (loss, metrics)``.

    ``data`` may carry ``old_log_probs`` (snapshot log-probs, a nested tensor like ``input_ids``).
    Without them the ratio is taken against the current log-probs, detached: r == 1 exactly, which
    is what the snapshot gives on the first update of a step (the weights have not moved yet).
    """

    mode: str = "psft"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28

    def __post_init__(self) -> None:
        # Imported here: config_checks imports LOSS_MODES from this module.
        from .config_checks import check_loss_mode

        check_loss_mode(self.mode)

    def __call__(self, model_output: dict, data: Any, dp_group: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss(model_output, data)

    def _loss(self, model_output: dict, data: Any) -> tuple[torch.Tensor, dict[str, float]]:
        log_prob = model_output["log_probs"].values()
        # The loss mask marks demonstration tokens; log_probs[t] scores token t + 1, so shift by one.
        mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0).to(log_prob.dtype)
        scale = data["dp_size"] / data["batch_num_tokens"]

        def token_mean(values: torch.Tensor) -> torch.Tensor:
            return (values * mask).sum() * scale

        old = data["old_log_probs"].values().to(log_prob) if "old_log_probs" in data.keys() else log_prob.detach()
        surrogate, ratio = psft_surrogate(log_prob, old, self.clip_ratio_low, self.clip_ratio_high)
        if self.mode == "psft":
            loss = -token_mean(surrogate)
        elif self.mode == "sft":
            loss = -token_mean(log_prob)
        else:  # dft
            loss = -token_mean(log_prob.detach().exp() * log_prob)

        # Metrics: divided by dp_size again so a plain sum over micro-batches and ranks is the mean.
        dp = float(data["dp_size"])
        with torch.no_grad():
            on = mask.bool()
            ratio_on = ratio.detach()[on]
            metrics = {
                "objective": loss.detach().item() / dp,
                "nll": -token_mean(log_prob.detach()).item() / dp,
                "clip_frac": token_mean((ratio.detach() > 1.0 + self.clip_ratio_high).float()).item() / dp,
                "ratio_mean": token_mean(ratio.detach()).item() / dp,
                "ratio_max": ratio_on.max().item() if ratio_on.numel() else 1.0,
                "ratio_min": ratio_on.min().item() if ratio_on.numel() else 1.0,
                "loss_tokens": float(mask.sum().item()),
            }
            if "entropy" in model_output:
                metrics["entropy"] = token_mean(model_output["entropy"].values().detach()).item() / dp
            if ARGMAX_HIT in model_output:
                metrics["token_acc"] = token_mean(model_output[ARGMAX_HIT].values().detach()).item() / dp
        return loss, metrics
