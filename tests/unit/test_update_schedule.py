"""The update schedule: every row once per pass; the snapshot skips only the first mini-batch."""

from __future__ import annotations

import torch

from recipe.psft.step_plan import rows_needing_snapshot, update_schedule


def test_schedule_covers_every_row_once_per_pass_and_skip_drops_only_the_first_mini_batch():
    schedule = update_schedule(16, 4, epochs=2, shuffle=True, seed=3)
    assert len(schedule) == 8
    for epoch in range(2):
        rows = torch.cat(schedule[epoch * 4 : (epoch + 1) * 4])
        assert sorted(rows.tolist()) == list(range(16))
    assert not torch.equal(torch.cat(schedule[:4]), torch.arange(16))  # shuffled
    # With 2 passes every row is used again after the weights moved: all rows need the snapshot.
    assert rows_needing_snapshot(schedule, skip_first=True).tolist() == list(range(16))
    one_pass = update_schedule(16, 4, epochs=1, shuffle=True, seed=3)
    needed = set(rows_needing_snapshot(one_pass, skip_first=True).tolist())
    assert needed == set(range(16)) - set(one_pass[0].tolist())
    assert rows_needing_snapshot(update_schedule(8, 8, 1, False, 0), skip_first=True).numel() == 0
