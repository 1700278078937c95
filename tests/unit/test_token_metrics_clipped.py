"""Clipped-token analytics: the per-micro-batch summary (by hand), its sum over micro-batches, ranks and
updates, the loss that produces it, the log file's writer and reader, and the plot tool on a synthetic log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loss_batches import make_batch, nested
from psft_settings import psft_settings

from recipe.psft.clipped_token_log import (
    LINE_KEYS,
    ClippedTokenLog,
    clipped_token_log_path,
    read_clipped_token_log,
)
from recipe.psft.losses import TokenLoss
from recipe.psft.step_metrics import ClippedTokenStats, StepMetrics
from recipe.psft.step_plan import plan_step
from recipe.psft.token_metrics import CLIPPED_TOKEN_FLAG, CLIPPED_TOKENS, clipped_token_summary, ratio_bin_edges

REPO = Path(__file__).resolve().parents[2]
INF = float("inf")
# ratio_bin_edges(0.2, 0.28): 1 - 0.2 is already an edge (0.8), 1 + 0.28 is added. 14 bins:
#  0 [0, .5]  1 (.5, .8]  2 (.8, .9]  3 (.9, .95]  4 (.95, .99]  5 (.99, 1]  6 (1, 1.01]  7 (1.01, 1.05]
#  8 (1.05, 1.1]  9 (1.1, 1.2]  10 (1.2, 1.28]  11 (1.28, 1.5]  12 (1.5, 2]  13 (2, inf]
EDGES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0, 1.01, 1.05, 1.1, 1.2, 1.28, 1.5, 2.0, INF]


def test_bin_edges_add_the_clip_bounds_once():
    assert ratio_bin_edges(0.2, 0.28) == EDGES
    assert ratio_bin_edges(0.2, INF) == [e for e in EDGES if e != 1.28]  # no clip: no extra edge
    assert 0.7 in ratio_bin_edges(0.3, 0.4) and 1.4 in ratio_bin_edges(0.3, 0.4)


def test_summary_counts_by_hand():
    ratio = torch.tensor([1.0, 0.7, 1.3, 1.6, 2.5, 1.28, 0.99, 5.0], dtype=torch.float64)
    labels = torch.tensor([10, 11, 12, 12, 13, 14, 12, 12])
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1])  # 0.99 (token 12) is a prompt token: not counted
    summary = clipped_token_summary(ratio, labels, mask, 0.2, 0.28)
    # 1.0 -> bin 5, 0.7 -> 1, 1.3 -> 11, 1.6 -> 12, 2.5 -> 13, 1.28 -> 10 (right-closed: not clipped), 5.0 -> 13
    assert summary["hist"] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 2]
    # Clipped (r > 1.28): token 12 at 1.3, 1.6, 5.0; token 13 at 2.5.
    assert summary["ids"] == [12, 13] and summary["counts"] == [3, 1]
    assert summary["ratio_sums"] == pytest.approx([7.9, 2.5])


def test_summary_of_a_nonfinite_ratio_still_counts_every_token():
    ratio = torch.tensor([float("nan"), 1.0, INF])
    summary = clipped_token_summary(ratio, torch.tensor([1, 2, 3]), torch.ones(3), 0.2, 0.28)
    assert sum(summary["hist"]) == 3 and summary["hist"][-1] == 2


def psft_loss_metrics(batch: dict, ids: torch.Tensor, rows: slice, flag: bool | None, mode: str = "psft") -> dict:
    """The loss's metrics on ``rows`` of ``batch`` (old log-probs shifted so some ratios pass the clip)."""
    lengths = batch["lengths"]
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    lo, hi = starts[rows.start], starts[rows.stop]
    sub = lengths[rows]
    shift = torch.linspace(-0.6, 0.6, len(batch["log_probs"]), dtype=torch.float64)
    data = {
        "loss_mask": nested(batch["loss_mask"][lo:hi], sub),
        "input_ids": nested(ids[lo:hi], sub),
        "old_log_probs": nested(batch["log_probs"][lo:hi] - shift[lo:hi], sub),
        "dp_size": 1,
        "batch_num_tokens": int(torch.roll(batch["loss_mask"], -1).sum()),
    }
    if flag is not None:
        data[CLIPPED_TOKEN_FLAG] = flag
    log_probs = nested(batch["log_probs"][lo:hi], sub)
    _, metrics = TokenLoss(mode, 0.2, 0.28)(model_output={"log_probs": log_probs}, data=data)
    return metrics


def test_loss_summary_summed_over_micro_batches_and_ranks_equals_the_whole_batch():
    batch = make_batch([7, 9, 5, 8], seed=4)
    ids = torch.randint(0, 6, (sum(batch["lengths"]),), generator=torch.Generator().manual_seed(0))
    whole = psft_loss_metrics(batch, ids, slice(0, 4), True)[CLIPPED_TOKENS]
    # The loss scores token t + 1 at t: the summary by hand over the shifted mask and labels.
    ratio = torch.exp(torch.linspace(-0.6, 0.6, len(batch["log_probs"]), dtype=torch.float64))
    expected = clipped_token_summary(ratio, torch.roll(ids, -1), torch.roll(batch["loss_mask"], -1), 0.2, 0.28)
    assert {k: whole[k] for k in ("hist", "ids", "counts")} == {k: expected[k] for k in ("hist", "ids", "counts")}
    assert whole["ratio_sums"] == pytest.approx(expected["ratio_sums"], rel=1e-12)
    assert sum(whole["counts"]) > 0 and sum(whole["hist"]) == int(batch["loss_mask"].sum())
    # As verl gathers them for one update: [per rank [per micro-batch]]; an update on rows 0..1 again.
    parts = [psft_loss_metrics(batch, ids, slice(i, i + 1), True)[CLIPPED_TOKENS] for i in range(4)]
    stats = ClippedTokenStats()
    stats.add([[parts[0], parts[1]], [parts[2], parts[3]]])
    assert stats.histogram == whole["hist"]
    assert dict(stats.counts) == dict(zip(whole["ids"], whole["counts"], strict=True))
    for token, ratio_sum in zip(whole["ids"], whole["ratio_sums"], strict=True):
        assert stats.ratio_sums[token] == pytest.approx(ratio_sum)
    stats.add([[parts[0]], [parts[1]]])
    assert stats.tokens == sum(whole["hist"]) + sum(parts[0]["hist"]) + sum(parts[1]["hist"])


def test_loss_gives_no_summary_unless_asked_and_psft():
    batch = make_batch([6, 8], seed=1)
    ids = torch.arange(sum(batch["lengths"]))
    assert CLIPPED_TOKENS not in psft_loss_metrics(batch, ids, slice(0, 2), None)
    assert CLIPPED_TOKENS not in psft_loss_metrics(batch, ids, slice(0, 2), False)
    assert CLIPPED_TOKENS not in psft_loss_metrics(batch, ids, slice(0, 2), True, mode="sft")


def test_top_tokens_by_count_then_id_with_mean_ratio():
    stats = ClippedTokenStats()
    stats.add({"hist": [5, 6], "ids": [7, 3, 9], "counts": [2, 4, 2], "ratio_sums": [3.0, 6.0, 2.8]})
    stats.add({"hist": [1, 0], "ids": [9], "counts": [2], "ratio_sums": [3.2]})
    assert stats.tokens == 12 and stats.clipped == 10
    assert stats.top(2) == [(3, 4, 1.5), (9, 4, 1.5)]
    assert stats.top(5)[2] == (7, 2, 1.5)
    with pytest.raises(ValueError, match="3 ratio bins, expected 2"):
        stats.add({"hist": [1, 0, 0], "ids": [], "counts": [], "ratio_sums": []})


def test_step_metrics_take_the_summary_apart_from_the_scalar_metrics():
    plan = plan_step(psft_settings(mini_batch_size=4), batch_size=4, step=1, seed=0, fused_kernels=False)
    metrics = StepMetrics(plan)
    summary = {"hist": [3, 1], "ids": [5], "counts": [1], "ratio_sums": [1.4]}
    worker = {"nll": [[0.5], [0.5]], "ratio_max": [[1.4], [1.0]], "ratio_min": [[1.0], [0.9]]}
    worker |= {"loss_tokens": [[2.0], [2.0]], "grad_norm": 1.0, "lr": 1e-3, CLIPPED_TOKENS: [[summary], [summary]]}
    metrics.add(0, worker)
    result = metrics.finish({}, [])
    assert result["train/loss"] == 1.0 and not any("clipped" in key for key in result)
    assert metrics.clipped.histogram == [6, 2] and metrics.clipped.top(1) == [(5, 2, pytest.approx(1.4))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from psft_assets.tiny_model import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def stats_for(step: int, ids: list[int]) -> ClippedTokenStats:
    stats = ClippedTokenStats()
    hist = [0] * (len(EDGES) - 1)
    hist[5], hist[11], hist[13] = 20 + step, len(ids), 0
    stats.add({"hist": hist, "ids": ids, "counts": [1] * len(ids), "ratio_sums": [1.3 + 0.01 * step] * len(ids)})
    return stats


def test_log_lines_decode_tokens_and_resume_keeps_earlier_steps(tmp_path, tokenizer):
    path = clipped_token_log_path(tmp_path / "logs" / "run.jsonl")
    assert path == tmp_path / "logs" / "run.clipped_tokens.jsonl"
    ids = tokenizer(" wait, so")["input_ids"]
    assert len(set(ids)) == len(ids) > 1
    log = ClippedTokenLog(path, EDGES, tokenizer)
    for step in (1, 2, 3):
        log.write(step, stats_for(step, ids))
    log.write(4, ClippedTokenStats())  # a step without analytics (SFT warm-up): no line
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and all(tuple(line) == LINE_KEYS for line in lines)
    first = lines[0]
    assert first["ratio_bin_edges"][-1] == "inf" and first["tokens"] == 21 + len(ids) and first["clipped"] == len(ids)
    assert "".join(t["token"] for t in sorted(first["top_clipped"], key=lambda t: ids.index(t["id"]))) == " wait, so"
    assert all(t["token"] == tokenizer.decode([t["id"]]) and t["mean_ratio"] == 1.31 for t in first["top_clipped"])
    # Resumed from step 2: steps 1 and 2 stay, step 3 is trained (and logged) again.
    resumed = ClippedTokenLog(path, EDGES, tokenizer, resume_step=2)
    resumed.write(3, stats_for(3, ids[:1]))
    entries = read_clipped_token_log(path)
    assert [e["step"] for e in entries] == [1, 2, 3] and entries[2]["clipped"] == 1
    assert entries[0]["ratio_bin_edges"][-1] == INF


def test_reader_names_file_and_line_of_a_bad_line(tmp_path):
    path = tmp_path / "run.clipped_tokens.jsonl"
    good = {"step": 1, "tokens": 1, "clipped": 0, "ratio_bin_edges": [0, "inf"], "ratio_histogram": [1]}
    path.write_text(json.dumps({**good, "top_clipped": []}) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=rf"{path}, line 2: .*missing keys \['top_clipped'\]"):
        read_clipped_token_log(path)
    path.write_text(json.dumps({**good, "top_clipped": [], "ratio_histogram": [1, 2]}) + "\n")
    with pytest.raises(ValueError, match="line 1: .*2 histogram counts for 2 bin edges"):
        read_clipped_token_log(path)


def test_plot_tool_draws_the_ratio_histogram_and_prints_the_top_tokens(tmp_path, tokenizer):
    run_log = tmp_path / "psft.jsonl"
    run_log.write_text("".join(json.dumps({"step": s, "data": {"train/clip_frac": 0.1}}) + "\n" for s in (1, 2, 3)))
    ids = tokenizer(" wait")["input_ids"] + tokenizer(" so")["input_ids"]
    log = ClippedTokenLog(clipped_token_log_path(run_log), EDGES, tokenizer)
    for step in (1, 2, 3):
        log.write(step, stats_for(step, ids if step > 1 else ids[:1]))
    out = tmp_path / "figures"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot_runs.py"), f"--run=PSFT={run_log}", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    png = out / "clipped_ratio_PSFT.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert str(png) in proc.stdout
    # The first token was clipped in 3 steps, the others in 2: it comes first, with its summed count.
    assert f"PSFT: {2 * len(ids) + 1} of " in proc.stdout
    rows = [line.strip().rsplit(maxsplit=2) for line in proc.stdout.splitlines() if line.startswith('  "')]
    assert rows[0][-2:] == ["3", f"{(1.31 + 1.32 + 1.33) / 3:.3f}"]
    assert json.loads(rows[0][0]) == tokenizer.decode([ids[0]])
