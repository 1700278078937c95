"""The PSFT/SFT/DFT losses, called exactly as verl's FSDP engine calls them (nested tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from loss_batches import make_batch, nested

from recipe.psft.losses import TokenLoss, psft_surrogate

EPS_LOW, EPS_HIGH = 0.2, 0.28


def loss_and_grad(
    loss: TokenLoss, batch: dict, rows: slice | None = None, old_shift=None, num_tokens=None, dp_size: int = 1
):
    """Loss and d loss / d log_probs for the sequences in ``rows``, normalised by ``num_tokens``."""
    lengths = batch["lengths"]
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    rows = rows or slice(0, len(lengths))
    lo, hi = starts[rows.start], starts[rows.stop]
    log_probs = batch["log_probs"][lo:hi].clone().requires_grad_(True)
    sub_lengths = lengths[rows]
    shifted_mask = torch.roll(batch["loss_mask"], -1)  # the engine's alignment
    data = {
        "loss_mask": nested(batch["loss_mask"][lo:hi], sub_lengths),
        "dp_size": dp_size,
        "batch_num_tokens": num_tokens if num_tokens is not None else int(shifted_mask.sum()),
    }
    if old_shift is not None:
        data["old_log_probs"] = nested(batch["log_probs"][lo:hi] - old_shift[lo:hi], sub_lengths)
    value, metrics = loss(model_output={"log_probs": nested(log_probs, sub_lengths)}, data=data)
    value.backward()
    return value.detach(), log_probs.grad, metrics


def test_psft_gradient_equals_sft_gradient_at_ratio_one():
    batch = make_batch([7, 9, 5])
    zero = torch.zeros_like(batch["log_probs"])
    _, grad_psft, metrics = loss_and_grad(TokenLoss("psft", EPS_LOW, EPS_HIGH), batch, old_shift=zero)
    _, grad_sft, _ = loss_and_grad(TokenLoss("sft"), batch)
    assert torch.count_nonzero(grad_sft) > 0
    torch.testing.assert_close(grad_psft, grad_sft, rtol=0, atol=1e-15)
    assert metrics["clip_frac"] == 0.0 and metrics["ratio_max"] == pytest.approx(1.0)


def test_without_old_log_probs_ratio_is_exactly_one_and_gradient_is_sft():
    batch = make_batch([6, 8])
    _, grad_psft, metrics = loss_and_grad(TokenLoss("psft", EPS_LOW, EPS_HIGH), batch)
    _, grad_sft, _ = loss_and_grad(TokenLoss("sft"), batch)
    assert torch.equal(grad_psft, grad_sft)
    assert metrics["ratio_min"] == 1.0 and metrics["ratio_max"] == 1.0


def test_upper_clip_zeroes_gradient_and_lower_side_keeps_ratio_weighted_gradient():
    batch = make_batch([12, 10], seed=3)
    n = batch["log_probs"].numel()
    # Alternate tokens: r = e^0.5 ~ 1.65 (above 1 + 0.28), r = e^-0.5 ~ 0.61 (below 1 - 0.2), r = e^0.1.
    pattern = torch.tensor([0.5, -0.5, 0.1], dtype=torch.float64)
    shift = pattern.repeat(n // 3 + 1)[:n]
    _, grad, metrics = loss_and_grad(TokenLoss("psft", EPS_LOW, EPS_HIGH), batch, old_shift=shift)
    mask = torch.roll(batch["loss_mask"], -1).bool()
    num_tokens = int(mask.sum())
    ratio = torch.exp(shift)
    high = mask & (ratio > 1 + EPS_HIGH)
    low = mask & (ratio < 1 - EPS_LOW)
    inside = mask & ~high & ~low
    assert high.any() and low.any() and inside.any()
    assert torch.all(grad[high] == 0)
    torch.testing.assert_close(grad[low], -ratio[low] / num_tokens)
    torch.testing.assert_close(grad[inside], -ratio[inside] / num_tokens)
    assert torch.all(grad[~mask] == 0)
    assert metrics["clip_frac"] == pytest.approx(high.sum().item() / num_tokens)
    assert metrics["ratio_max"] == pytest.approx(math.exp(0.5))


@pytest.mark.parametrize("mode", ["psft", "sft", "dft"])
def test_loss_independent_of_micro_batch_and_rank_split(mode):
    batch = make_batch([5, 9, 7, 11], seed=7)
    n = batch["log_probs"].numel()
    shift = 0.3 * torch.sin(torch.arange(n, dtype=torch.float64))
    loss = TokenLoss(mode, EPS_LOW, EPS_HIGH)
    total = int(torch.roll(batch["loss_mask"], -1).sum())
    whole, whole_grad, _ = loss_and_grad(loss, batch, old_shift=shift, num_tokens=total)

    # Two micro-batches on one rank: the engine sums their losses and accumulates gradients.
    a, grad_a, _ = loss_and_grad(loss, batch, slice(0, 1), old_shift=shift, num_tokens=total)
    b, grad_b, _ = loss_and_grad(loss, batch, slice(1, 4), old_shift=shift, num_tokens=total)
    torch.testing.assert_close(a + b, whole)
    torch.testing.assert_close(torch.cat([grad_a, grad_b]), whole_grad)

    # Two data-parallel ranks: each loss is scaled by dp_size, FSDP averages gradients over ranks.
    r0, grad_r0, _ = loss_and_grad(loss, batch, slice(0, 2), old_shift=shift, num_tokens=total, dp_size=2)
    r1, grad_r1, _ = loss_and_grad(loss, batch, slice(2, 4), old_shift=shift, num_tokens=total, dp_size=2)
    torch.testing.assert_close((r0 + r1) / 2, whole)
    torch.testing.assert_close(torch.cat([grad_r0, grad_r1]) / 2, whole_grad)


def test_dft_weights_each_token_by_its_probability():
    batch = make_batch([8, 6], seed=11)
    _, grad, metrics = loss_and_grad(TokenLoss("dft"), batch)
    mask = torch.roll(batch["loss_mask"], -1).bool()
    expected = -torch.exp(batch["log_probs"]) / int(mask.sum())
    torch.testing.assert_close(grad[mask], expected[mask])
    nll = -(batch["log_probs"][mask]).mean().item()
    assert metrics["nll"] == pytest.approx(nll)


def test_unknown_loss_mode_is_rejected():
    with pytest.raises(ValueError, match="psft.loss_mode='ppo'"):
        TokenLoss("ppo")


def test_psft_is_registered_in_verls_policy_loss_registry():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    import recipe.psft.verl_adapters.policy_loss  # noqa: F401  (registers psft)

    class ActorCfg:
        clip_ratio = 0.2
        clip_ratio_low = EPS_LOW
        clip_ratio_high = EPS_HIGH
        global_batch_info = {}

    fn = get_policy_loss_fn("psft")
    log_prob = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    old = log_prob - torch.tensor([[0.0, 0.5, -0.5]])
    mask = torch.ones_like(log_prob, dtype=torch.bool)
    # Advantages are ignored: every token is a demonstration token (A = +1).
    loss, metrics = fn(old, log_prob, advantages=-torch.ones_like(log_prob), response_mask=mask, config=ActorCfg())
    surrogate, _ = psft_surrogate(log_prob, old, EPS_LOW, EPS_HIGH)
    assert loss.item() == pytest.approx(-surrogate.mean().item())
    assert metrics["actor/pg_clipfrac"] == pytest.approx(1 / 3)
