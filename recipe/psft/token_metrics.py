"""Token metrics without gradients: per-token entropy and whether the label is the argmax.

``train/entropy`` and ``train/token_acc`` (and their validation and per-update forms) are means of
these values over demonstration tokens. They need the full next-token distribution, which only the
engine's logits hook shows (``verl_adapters/engine.py``); this module is the arithmetic, kept apart
from the objective in ``losses.py`` so that file holds only the losses.
"""

from __future__ import annotations

import torch

# Optional per-token inputs of the loss, in ``model_output``, filled without gradients by the engine's
# logits hook (see verl_adapters/engine.py): 1.0 where the logits' argmax is the next token (the
# token_acc metric), and the token's entropy (the entropy metric).
ARGMAX_HIT = "argmax_hit"
PROBE_ENTROPY = "probe_entropy"

# Rows of logits handled at once by the no-grad metrics probe. On a GPU, 1024 rows bound its
# temporaries (two [rows, vocab] fp32 buffers, about 0.6 GB each at a 151k vocabulary). On a CPU the
# probe is bound by memory traffic: chunks of a few MB keep its passes in cache, and its two buffers
# are reused across chunks because a fresh multi-MB tensor per chunk costs a page fault per 4 KB.
PROBE_CHUNK_ROWS = 1024
PROBE_CHUNK_ELEMENTS_CPU = 2_000_000


def probe_chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows of logits per chunk of the metrics probe on ``device``."""
    if device.type == "cpu":
        return max(1, PROBE_CHUNK_ELEMENTS_CPU // max(1, vocab))
    return PROBE_CHUNK_ROWS


def token_spans(mask: torch.Tensor | None, n: int) -> list[tuple[int, int]]:
    """The [start, end) runs of True in a 1-D ``mask`` (all of ``range(n)`` when there is no mask)."""
    if mask is None:
        return [(0, n)] if n else []
    flags = torch.nn.functional.pad(mask.bool().to(torch.int8), (1, 1))
    edges = torch.nonzero(flags.diff()).flatten().tolist()
    return list(zip(edges[::2], edges[1::2], strict=True))


@torch.no_grad()
def entropy_and_argmax_hit(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy of softmax(logits) and whether the label is the argmax, without autograd.

    Only rows where ``mask`` is true are computed (the others are 0): the metrics are means over
    demonstration tokens, so prompt tokens need no vocabulary-sized work. Chunked over rows, with two
    reused buffers: nothing vocabulary-sized outlives the call. A label counts as the argmax when its
    logit equals the row's maximum (``amax`` is one cheap pass, ``max`` with indices is three times
    slower on CPU); the two differ only on exact ties, where this counts the label as a hit.
    """
    n, vocab = logits.shape
    entropy = torch.zeros(n, dtype=torch.float32, device=logits.device)
    hit = torch.zeros(n, dtype=torch.float32, device=logits.device)
    spans = token_spans(mask, n)
    if not spans:
        return entropy, hit
    rows = min(probe_chunk_rows(vocab, logits.device), max(end - start for start, end in spans))
    shifted = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
    exp = torch.empty_like(shifted)
    for span_start, span_end in spans:
        for start in range(span_start, span_end, rows):
            end = min(start + rows, span_end)
            chunk = logits[start:end].float()
            top = chunk.amax(dim=-1, keepdim=True)
            # H = log Z - sum(e * s) / Z with s = logits - max, e = exp(s), Z = sum(e): one exp per
            # logit, and the shift keeps the sums small (about 1e-6 from float64 at a 151k vocabulary,
            # where logsumexp - sum(softmax * logits) is about 3e-4 off).
            s = torch.sub(chunk, top, out=shifted[: end - start])
            e = torch.exp(s, out=exp[: end - start])
            total = e.sum(dim=-1)
            entropy[start:end] = total.log() - torch.linalg.vecdot(e, s) / total
            hit[start:end] = (chunk.gather(1, labels[start:end, None]) >= top).squeeze(1).float()
    return entropy, hit
