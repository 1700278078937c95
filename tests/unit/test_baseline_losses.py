"""SFT-KL, ASFT, seq-mean-token-mean and the no-grad metrics probe, called as verl's engine calls them."""

from __future__ import annotations

import loss_batches
import pytest
import torch
from loss_batches import nested

from recipe.psft.losses import TokenLoss
from recipe.psft.token_metrics import entropy_and_argmax_hit, probe_chunk_rows


def make_batch(lengths: list[int], seed: int = 0) -> dict:
    """Rows whose first token is always prompt, with reference log-probs offset from the policy's."""
    return loss_batches.make_batch(lengths, seed, min_prompt=1, ref_shift=True)


def run(loss: TokenLoss, batch: dict, rows: slice | None = None, dp_size: int = 1, with_ref: bool = True):
    """Loss, d loss / d log_probs and metrics for the rows in ``rows``, normalised over the whole batch
    (tokens and sequences), as the engine does for one micro-batch of a mini-batch."""
    lengths = batch["lengths"]
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    rows = rows or slice(0, len(lengths))
    lo, hi = starts[rows.start], starts[rows.stop]
    sub = lengths[rows]
    log_probs = batch["log_probs"][lo:hi].clone().requires_grad_(True)
    data = {
        "loss_mask": nested(batch["loss_mask"][lo:hi], sub),
        "dp_size": dp_size,
        "batch_num_tokens": int(batch["loss_mask"].sum()),
        "batch_num_sequences": len(lengths),
    }
    if with_ref:
        data["ref_log_probs"] = nested(batch["log_probs"][lo:hi] - batch["ref_shift"][lo:hi], sub)
    value, metrics = loss(model_output={"log_probs": nested(log_probs, sub)}, data=data)
    value.backward()
    return value.detach(), log_probs.grad, metrics


def shifted_mask(batch: dict) -> torch.Tensor:
    return torch.roll(batch["loss_mask"], -1).bool()


def test_sft_kl_with_zero_coefficient_is_sft():
    batch = make_batch([7, 9, 5])
    value, grad, _ = run(TokenLoss("sft_kl", kl_coef=0.0), batch)
    value_sft, grad_sft, _ = run(TokenLoss("sft"), batch)
    assert torch.equal(value, value_sft) and torch.equal(grad, grad_sft)


@pytest.mark.parametrize("estimator", ["k1", "k2", "low_var_kl", "k3+"])
def test_sft_kl_adds_coefficient_times_verls_estimator(estimator):
    from verl.trainer.ppo.core_algos import kl_penalty

    batch = make_batch([6, 10, 4], seed=2)
    value, grad, metrics = run(TokenLoss("sft_kl", kl_coef=0.5, kl_estimator=estimator), batch)
    mask = shifted_mask(batch)
    lp = batch["log_probs"].clone().requires_grad_(True)
    ref = batch["log_probs"] - batch["ref_shift"]
    kl = kl_penalty(lp, ref, estimator)
    expected = -lp[mask].mean() + 0.5 * kl[mask].mean()
    expected.backward()
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(grad, lp.grad)
    assert metrics["kl"] == pytest.approx(kl.detach()[mask].mean().item())


def test_kl_is_zero_at_the_reference_and_positive_away_from_it():
    batch = make_batch([8, 8], seed=4)
    batch_at_ref = {**batch, "ref_shift": torch.zeros_like(batch["ref_shift"])}
    _, _, at_ref = run(TokenLoss("sft_kl"), batch_at_ref)
    _, _, away = run(TokenLoss("sft_kl"), batch)
    assert at_ref["kl"] == 0.0
    assert away["kl"] > 0.0


def test_asft_is_dft_plus_kl_and_kl_is_only_a_metric_elsewhere():
    batch = make_batch([5, 9], seed=5)
    value_asft, grad_asft, _ = run(TokenLoss("asft", kl_coef=0.3), batch)
    value_dft, grad_dft, dft_metrics = run(TokenLoss("dft"), batch)
    value_kl_only, grad_kl_only, _ = run(TokenLoss("sft_kl", kl_coef=0.3), batch)
    value_sft, grad_sft, _ = run(TokenLoss("sft"), batch)
    torch.testing.assert_close(value_asft - value_dft, value_kl_only - value_sft)
    torch.testing.assert_close(grad_asft - grad_dft, grad_kl_only - grad_sft)
    assert "kl" in dft_metrics  # logged with a reference, not added to the loss
    value_dft_no_ref, _, no_ref_metrics = run(TokenLoss("dft"), batch, with_ref=False)
    assert torch.equal(value_dft, value_dft_no_ref) and "kl" not in no_ref_metrics


def test_kl_modes_without_reference_log_probs_fail_clearly():
    with pytest.raises(ValueError, match="ref_log_probs"):
        run(TokenLoss("sft_kl"), make_batch([4, 5]), with_ref=False)


def test_unknown_kl_estimator_is_rejected():
    with pytest.raises(ValueError, match="psft.kl_estimator='full'"):
        TokenLoss("sft_kl", kl_estimator="full")


def test_seq_mean_token_mean_matches_hand_computation_on_unequal_rows():
    lengths = [4, 12, 7]
    batch = make_batch(lengths, seed=6)
    value, grad, _ = run(TokenLoss("sft", loss_agg_mode="seq-mean-token-mean"), batch)
    mask = shifted_mask(batch)
    per_row = []
    start = 0
    for n in lengths:
        lp, m = batch["log_probs"][start : start + n], mask[start : start + n]
        per_row.append(-lp[m].mean())
        # Every demonstration token of a row gets 1 / (rows x that row's tokens): short rows weigh more.
        torch.testing.assert_close(
            grad[start : start + n][m], torch.full((int(m.sum()),), -1 / (3 * m.sum().item()), dtype=grad.dtype)
        )
        start += n
    torch.testing.assert_close(value, torch.stack(per_row).mean())
    token_mean, _, _ = run(TokenLoss("sft"), batch)
    assert not torch.isclose(value, token_mean)


@pytest.mark.parametrize("mode", ["psft", "sft", "dft", "sft_kl", "asft"])
def test_seq_mean_token_mean_is_micro_batch_and_rank_invariant(mode):
    batch = make_batch([5, 9, 7, 11], seed=7)
    loss = TokenLoss(mode, loss_agg_mode="seq-mean-token-mean")
    whole, whole_grad, _ = run(loss, batch)
    # Two micro-batches on one rank: the engine sums their losses and accumulates gradients.
    a, grad_a, _ = run(loss, batch, slice(0, 1))
    b, grad_b, _ = run(loss, batch, slice(1, 4))
    torch.testing.assert_close(a + b, whole)
    torch.testing.assert_close(torch.cat([grad_a, grad_b]), whole_grad)
    # Two data-parallel ranks: each loss scaled by dp_size, gradients averaged over ranks.
    r0, grad_r0, _ = run(loss, batch, slice(0, 3), dp_size=2)
    r1, grad_r1, _ = run(loss, batch, slice(3, 4), dp_size=2)
    torch.testing.assert_close((r0 + r1) / 2, whole)
    torch.testing.assert_close(torch.cat([grad_r0, grad_r1]) / 2, whole_grad)


def test_probe_entropy_and_accuracy_match_a_direct_computation_without_a_graph():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2500, 300, generator=gen).requires_grad_(True)  # more rows than one chunk
    labels = torch.randint(0, 300, (2500,), generator=gen)
    entropy, hit = entropy_and_argmax_hit(logits, labels)
    probs = torch.softmax(logits.detach(), dim=-1)
    torch.testing.assert_close(entropy, -(probs * probs.log()).sum(-1))
    assert torch.equal(hit, (logits.detach().argmax(-1) == labels).float())
    assert not entropy.requires_grad and entropy.grad_fn is None and hit.grad_fn is None


def test_probe_uses_cache_sized_chunks_on_cpu_and_covers_a_partial_last_chunk():
    vocab = 800_000  # 2 rows per chunk on CPU: 5 rows make chunks of 2, 2 and 1
    assert probe_chunk_rows(vocab, torch.device("cpu")) == 2
    assert probe_chunk_rows(vocab, torch.device("cuda")) == 1024
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(5, vocab, generator=gen) * 4
    labels = logits.argmax(-1)
    labels[3] = (labels[3] + 1) % vocab
    entropy, hit = entropy_and_argmax_hit(logits, labels)
    exact = torch.distributions.Categorical(logits=logits.double()).entropy().float()
    torch.testing.assert_close(entropy, exact, rtol=2e-6, atol=0)  # fp32, 800k terms, shifted by the max
    assert hit.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_probe_computes_only_masked_rows_across_spans_and_chunk_edges():
    # Three spans of demonstration tokens (the first at row 0, the last at the final row), one of
    # them longer than a chunk, so spans and chunks cut each other in every way.
    gen = torch.Generator().manual_seed(10)
    vocab = 2_000_000 // 3  # 3 rows per CPU chunk
    logits = torch.randn(12, vocab, generator=gen) * 3
    labels = torch.randint(0, vocab, (12,), generator=gen)
    labels[[0, 5, 11]] = logits[[0, 5, 11]].argmax(-1)
    mask = torch.tensor([1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1], dtype=torch.bool)
    entropy, hit = entropy_and_argmax_hit(logits, labels, mask)
    exact = torch.distributions.Categorical(logits=logits.double()).entropy().float()
    torch.testing.assert_close(entropy[mask], exact[mask], rtol=2e-6, atol=0)
    assert torch.equal(hit[mask], (logits.argmax(-1) == labels).float()[mask])
    assert not entropy[~mask].any() and not hit[~mask].any()  # never computed
    assert hit[[0, 5, 11]].tolist() == [1.0, 1.0, 1.0]
    empty_entropy, empty_hit = entropy_and_argmax_hit(logits, labels, torch.zeros(12, dtype=torch.bool))
    assert not empty_entropy.any() and not empty_hit.any()


def test_loss_reports_probe_entropy_and_accuracy_as_token_means():
    batch = make_batch([6, 9], seed=9)
    n = batch["log_probs"].numel()
    entropy = torch.linspace(0.1, 2.0, n, dtype=torch.float64)
    hits = (torch.arange(n) % 2).double()
    lengths = batch["lengths"]
    data = {
        "loss_mask": nested(batch["loss_mask"], lengths),
        "dp_size": 1,
        "batch_num_tokens": int(batch["loss_mask"].sum()),
    }
    model_output = {
        "log_probs": nested(batch["log_probs"], lengths),
        "probe_entropy": nested(entropy, lengths),
        "argmax_hit": nested(hits, lengths),
    }
    _, metrics = TokenLoss("sft")(model_output=model_output, data=data)
    mask = shifted_mask(batch)
    assert metrics["entropy"] == pytest.approx(entropy[mask].mean().item())
    assert metrics["token_acc"] == pytest.approx(hits[mask].mean().item())
