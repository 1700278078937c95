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


# --- Clipped-token analytics (psft.clipped_token_log) ----------------------------------------------
# Which demonstration tokens PSFT's trust region stops, and how the ratio r = pi / pi_old spreads over
# demonstration tokens. With A = +1 only the upper clip binds: a token with r > 1 + clip_ratio_high gets
# no gradient (losses.py), the same tokens train/clip_frac counts. The loss summarises each micro-batch
# on its worker into a few numbers (CLIPPED_TOKENS in its metrics): the histogram of r and, per distinct
# clipped token id, its count and ratio sum. The driver adds them up (step_metrics.ClippedTokenStats)
# and writes one line per step (clipped_token_log.py).

# Key of the per-micro-batch summary in the loss's metrics, and the non-tensor flag on train batches
# that asks for it (engine.train_meta, from psft.clipped_token_log; read per step, so it can change).
CLIPPED_TOKENS = "clipped_tokens"
CLIPPED_TOKEN_FLAG = "clipped_token_log"

# Ratio histogram bin edges, besides 1 - clip_ratio_low and 1 + clip_ratio_high (ratio_bin_edges): fine
# around 1, where nearly every token sits after a few updates, coarse in the tails. Bins are right-closed,
# (e[i], e[i + 1]], the first [0, e[1]]: r == 1 (the first update of a step, against its own weights)
# counts in (0.99, 1], and the bins above 1 + clip_ratio_high hold exactly the clipped tokens.
RATIO_BIN_EDGES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0, 1.01, 1.05, 1.1, 1.2, 1.5, 2.0, float("inf"))


def ratio_bin_edges(clip_ratio_low: float, clip_ratio_high: float) -> list[float]:
    """The histogram's bin edges for these clip ranges: RATIO_BIN_EDGES plus both clip bounds, sorted."""
    edges = set(RATIO_BIN_EDGES)
    for bound in (1.0 - clip_ratio_low, 1.0 + clip_ratio_high):
        if 0.0 < bound < float("inf") and all(abs(bound - e) > 1e-9 for e in edges):
            edges.add(bound)
    return sorted(edges)


@torch.no_grad()
def clipped_token_summary(
    ratio: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
) -> dict[str, list]:
    """One micro-batch's clipped-token analytics, as plain lists (they travel in the loss's metrics).

    ``ratio``: r per token; ``labels``: the token each r scores (the next input id); ``mask``: the shifted
    loss mask (demonstration tokens). Returns ``hist``: counts of r over demonstration tokens in the bins
    of :func:`ratio_bin_edges` (a non-finite r counts in the last bin, so the counts always sum to the
    demonstration tokens), and for the tokens with r > 1 + clip_ratio_high, per distinct id: ``ids``,
    ``counts`` and ``ratio_sums``. Its size is the bins plus three numbers per distinct clipped id.
    """
    on = mask.bool()
    r = ratio.detach()[on]
    edges = ratio_bin_edges(clip_ratio_low, clip_ratio_high)
    inner = torch.tensor(edges[1:-1], dtype=r.dtype, device=r.device)
    hist = torch.bincount(torch.bucketize(r, inner), minlength=len(edges) - 1)
    clipped = r > 1.0 + clip_ratio_high
    ids, inverse, counts = torch.unique(labels[on][clipped], return_inverse=True, return_counts=True)
    sums = torch.zeros(len(ids), dtype=torch.float64, device=r.device).index_add_(0, inverse, r[clipped].double())
    return {"hist": hist.tolist(), "ids": ids.tolist(), "counts": counts.tolist(), "ratio_sums": sums.tolist()}
