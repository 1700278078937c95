"""PSFT in verl's PPO policy-loss registry: ``actor_rollout_ref.actor.policy_loss.loss_mode=psft``.

Importing this module registers the loss. verl's hook for extra modules imports it in every process
that runs ``import verl`` when ``VERL_USE_EXTERNAL_MODULES=recipe.psft.verl_adapters.policy_loss`` is set.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss

from ..losses import psft_surrogate


@register_policy_loss("psft")
def compute_policy_loss_psft(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """PSFT in verl's policy-loss registry (``actor.policy_loss.loss_mode=psft``).

    Every response token is treated as a demonstration token (A = +1), so ``advantages`` is ignored:
    this lets verl's PPO actor run PSFT on demonstration batches. Clip ranges come from the actor's
    ``clip_ratio_low`` / ``clip_ratio_high`` (falling back to ``clip_ratio``).
    """
    clip = getattr(config, "clip_ratio", 0.2) if config is not None else 0.2
    low = getattr(config, "clip_ratio_low", None) or clip
    high = getattr(config, "clip_ratio_high", None) or clip
    surrogate, ratio = psft_surrogate(log_prob, old_log_prob, low, high)
    losses = -surrogate
    if rollout_is_weights is not None:
        losses = losses * rollout_is_weights
    global_info = getattr(config, "global_batch_info", None) or {}
    loss = agg_loss(loss_mat=losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_info)
    mask = response_mask.bool()
    with torch.no_grad():
        clipfrac = (ratio[mask] > 1.0 + high).float().mean() if mask.any() else torch.zeros(())
        ppo_kl = (old_log_prob - log_prob)[mask].mean() if mask.any() else torch.zeros(())
    return loss, {"actor/pg_clipfrac": clipfrac.item(), "actor/ppo_kl": ppo_kl.item()}
