"""PSFT and its baselines as token losses for verl's engine workers.

PSFT (arXiv 2508.17784) reads SFT as a policy gradient with advantage A = +1 on every demonstration
token and adds PPO's trust region. With r = pi_theta(y_t) / pi_old(y_t) (pi_old: the frozen snapshot
taken at the start of the training step, or the initial model with ``psft.snapshot=initial``),

    L_psft   = - mean over loss tokens of  min(r, clip(r, 1 - eps_low, 1 + eps_high))

Because A > 0 only the upper clip binds: a token with r > 1 + eps_high contributes no gradient; any
other token gets -r * grad log p. At r = 1 this is exactly SFT's gradient.

    L_sft    = - mean log p(y_t)                           (negative log-likelihood)
    L_dft    = - mean sg(p(y_t)) * log p(y_t)              (Dynamic Fine-Tuning, Wu et al. 2025)
    L_sft_kl = L_sft + kl_coef * mean KL_est(pi_theta || pi_ref)   (the paper's SFT-KL baseline)
    L_asft   = L_dft + kl_coef * mean KL_est(pi_theta || pi_ref)   (anchored SFT: DFT + the same KL)

pi_ref is the initial model; KL_est is one of verl's per-token estimators (``kl_penalty``: k1, k2,
k3/low_var_kl, abs, ... and the straight-through "+" forms) evaluated on the demonstration tokens.

Aggregation (``loss_agg_mode``, verl's names):

* ``token-mean``: mean over the loss tokens of the whole mini-batch on all data-parallel ranks (verl's
  ``batch_num_tokens``);
* ``seq-mean-token-mean``: each sequence's token mean, averaged over the sequences of the whole
  mini-batch (``batch_num_sequences``, counted by the driver over all ranks);
* ``micro-token-mean``: the original's rule (verl 0.5's PPO actor, ``dp_actor.update_policy``): the
  token mean inside each micro-batch, weighted by the micro-batch's share of the mini-batch's
  sequences, n_micro / n_mini_batch; summed over a rank's micro-batches, averaged over ranks.

The first two do not depend on how a mini-batch is cut into micro-batches or ranks: the engine sums
the micro-batch losses and averages gradients over ranks, hence the ``* dp_size`` below, exactly as
verl's own ``sft_loss``. ``micro-token-mean`` depends on that cut by definition (it is the original's
rule, not a property of the data); given the cut it is exact. Logged metrics are always global token
means, whatever the loss's aggregation, so runs with different settings stay comparable.

No clip (the paper's unstable ablation): ``clip_ratio_high=inf`` makes the PSFT objective the plain
importance-weighted one, - mean r (the lower clip never binds with A = +1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from verl.trainer.ppo.core_algos import kl_penalty  # verl's public per-token KL estimators

from .token_metrics import ARGMAX_HIT, CLIPPED_TOKEN_FLAG, CLIPPED_TOKENS, PROBE_ENTROPY, clipped_token_summary

LOSS_MODES = ("psft", "sft", "dft", "sft_kl", "asft")
KL_LOSS_MODES = ("sft_kl", "asft")  # modes with a KL penalty to the reference (initial) model
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "micro-token-mean")

# How the driver reduces each per-micro-batch metric over micro-batches, ranks and mini-batches.
# "sum": values are already divided by the global token count, so their sum is the global mean.
METRIC_REDUCTION = {"ratio_max": "max", "ratio_min": "min"}


def psft_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip_ratio_low: float, clip_ratio_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PSFT objective min(r, clip(r, 1 - eps_low, 1 + eps_high)) and the ratio r."""
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    return torch.minimum(ratio, clipped), ratio


def kl_estimate(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) by one of verl's ``kl_penalty`` estimators."""
    return kl_penalty(log_prob, ref_log_prob, estimator)


def check_loss_settings(mode: str, loss_agg_mode: str, kl_estimator: str) -> None:
    """ValueError naming the setting when a loss mode, aggregation or KL estimator does not exist.

    The KL estimator is tried on a probe, so whatever verl's ``kl_penalty`` accepts is accepted.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"psft.loss_mode={mode!r}: expected one of {', '.join(LOSS_MODES)}")
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"psft.loss_agg_mode={loss_agg_mode!r}: expected one of {', '.join(LOSS_AGG_MODES)}")
    probe = torch.zeros(2)
    try:
        kl_estimate(probe, probe, kl_estimator)
    except NotImplementedError:
        raise ValueError(
            f"psft.kl_estimator={kl_estimator!r}: verl's kl_penalty has no such per-token estimator; use one "
            "of k1 (kl), k2 (mse), k3 (low_var_kl), abs, or a straight-through form such as k3+"
        ) from None


@dataclass(frozen=True)
class TokenLoss:
    """A loss with verl's engine signature ``(model_output, data, dp_group) -> (loss, metrics)``.

    ``data`` may carry ``old_log_probs`` (the snapshot's log-probs) and ``ref_log_probs`` (the
    initial model's), nested tensors like ``input_ids``. Without old log-probs the ratio is taken
    against the current log-probs, detached: r == 1 exactly, which is what the snapshot gives on the
    first update of a step (the weights have not moved yet). With reference log-probs the KL to the
    reference is logged as a metric in every mode, and added to the loss in sft_kl / asft.
    """

    mode: str = "psft"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    kl_coef: float = 0.5
    kl_estimator: str = "low_var_kl"
    loss_agg_mode: str = "token-mean"

    def __post_init__(self) -> None:
        check_loss_settings(self.mode, self.loss_agg_mode, self.kl_estimator)

    def __call__(self, model_output: dict, data: Any, dp_group: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        return self._loss(model_output, data)

    def _loss(self, model_output: dict, data: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        log_prob = model_output["log_probs"].values()
        # The loss mask marks demonstration tokens; log_probs[t] scores token t + 1, so shift by one.
        mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0).to(log_prob.dtype)
        dp = data["dp_size"]
        scale = dp / data["batch_num_tokens"]

        def token_mean(values: torch.Tensor) -> torch.Tensor:
            return (values * mask).sum() * scale

        if self.loss_agg_mode == "token-mean":
            aggregate = token_mean
        elif self.loss_agg_mode == "micro-token-mean":
            aggregate = self._micro_token_mean(data, mask)
        else:
            aggregate = self._seq_mean_token_mean(data, mask)

        old = data["old_log_probs"].values().to(log_prob) if "old_log_probs" in data.keys() else log_prob.detach()
        ref = data["ref_log_probs"].values().to(log_prob) if "ref_log_probs" in data.keys() else None
        surrogate, ratio = psft_surrogate(log_prob, old, self.clip_ratio_low, self.clip_ratio_high)
        if self.mode == "psft":
            loss = -aggregate(surrogate)
        elif self.mode in ("sft", "sft_kl"):
            loss = -aggregate(log_prob)
        else:  # dft, asft
            loss = -aggregate(log_prob.detach().exp() * log_prob)
        kl = kl_estimate(log_prob, ref, self.kl_estimator) if ref is not None else None
        if self.mode in KL_LOSS_MODES:
            if kl is None:
                raise ValueError(f"psft.loss_mode={self.mode} needs the reference log-probs (ref_log_probs)")
            loss = loss + self.kl_coef * aggregate(kl)

        # Metrics: divided by dp_size again so a plain sum over micro-batches and ranks is the mean.
        dp = float(dp)
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
            if kl is not None:
                metrics["kl"] = token_mean(kl.detach()).item() / dp
            entropy = model_output.get(PROBE_ENTROPY, model_output.get("entropy"))
            if entropy is not None:
                metrics["entropy"] = token_mean(entropy.values().detach().to(mask)).item() / dp
            if ARGMAX_HIT in model_output:
                metrics["token_acc"] = token_mean(model_output[ARGMAX_HIT].values().detach().to(mask)).item() / dp
            if self.mode == "psft" and CLIPPED_TOKEN_FLAG in data.keys() and data[CLIPPED_TOKEN_FLAG]:
                # Not a mean: per-micro-batch counts the driver adds up (psft.clipped_token_log).
                labels = torch.roll(data["input_ids"].values(), shifts=-1, dims=0).to(ratio.device)
                metrics[CLIPPED_TOKENS] = clipped_token_summary(
                    ratio, labels, mask, self.clip_ratio_low, self.clip_ratio_high
                )
        return loss, metrics

    @staticmethod
    def _seq_mean_token_mean(data: Any, mask: torch.Tensor):
        """Aggregation by verl's ``seq-mean-token-mean``, exact under any micro-batch / rank split.

        Each sequence's masked token sum is divided by its own token count, then summed and divided
        by the number of sequences with loss tokens in the whole mini-batch on all ranks
        (``batch_num_sequences``, set by the driver, like ``batch_num_tokens`` is for tokens).
        """
        offsets = data["loss_mask"].offsets().to(mask.device)
        lengths = offsets.diff()
        seq_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=mask.device), lengths)
        seq_tokens = torch.zeros(len(lengths), dtype=mask.dtype, device=mask.device).index_add_(0, seq_of_token, mask)
        scale = data["dp_size"] / data["batch_num_sequences"]

        def seq_mean_token_mean(values: torch.Tensor) -> torch.Tensor:
            sums = torch.zeros(len(lengths), dtype=values.dtype, device=values.device).index_add(
                0, seq_of_token, values * mask
            )
            return (sums / seq_tokens.clamp_min(1)).sum() * scale

        return seq_mean_token_mean

    @staticmethod
    def _micro_token_mean(data: Any, mask: torch.Tensor):
        """Aggregation by the original's rule (verl 0.5 ``dp_actor.update_policy``, dynamic or fixed
        micro-batches alike): ``masked_mean`` over this micro-batch's loss tokens, times
        ``loss_scale_factor`` = (sequences in the micro-batch) / (the mini-batch's sequences per rank);
        FSDP then averages gradients over ranks. Here: x dp_size / (the mini-batch's sequences on all
        ranks, ``batch_num_sequences``), which is the same number, and the engine's rank average.

        Sequences are counted when they have loss tokens (in the original every row has some); a
        micro-batch without loss tokens contributes 0, as ``masked_mean`` gives there.
        """
        lengths = data["loss_mask"].offsets().to(mask.device).diff()
        seq_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=mask.device), lengths)
        seq_tokens = torch.zeros(len(lengths), dtype=mask.dtype, device=mask.device).index_add_(0, seq_of_token, mask)
        sequences = int((seq_tokens > 0).sum().item())
        tokens = float(mask.sum().item())
        scale = data["dp_size"] * sequences / data["batch_num_sequences"] / max(tokens, 1.0)

        def micro_token_mean(values: torch.Tensor) -> torch.Tensor:
            return (values * mask).sum() * scale

        return micro_token_mean
