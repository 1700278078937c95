"""Packed batches of per-token log-probs, shaped as verl's FSDP engine hands them to a loss."""

from __future__ import annotations

import torch


def nested(values: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Concatenated per-token ``values`` of sequences of ``lengths``, as a jagged nested tensor."""
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def make_batch(lengths: list[int], seed: int = 0, min_prompt: int = 0, ref_shift: bool = False) -> dict:
    """Sequences with a prompt part (a third, at least ``min_prompt`` tokens; mask 0) and a
    demonstration part (mask 1); random log-probs and, with ``ref_shift``, a random offset of the
    reference's log-probs from them."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    mask = []
    for n in lengths:
        prompt = max(min_prompt, n // 3)
        mask += [0] * prompt + [1] * (n - prompt)
    batch = {
        "log_probs": -torch.rand(total, generator=gen, dtype=torch.float64) * 3 - 0.01,
        "loss_mask": torch.tensor(mask),
        "lengths": lengths,
    }
    if ref_shift:
        batch["ref_shift"] = 0.4 * torch.randn(total, generator=gen, dtype=torch.float64)
    return batch
