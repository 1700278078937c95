"""The long-run guard's policy without Ray: when to save, postponing after a skipped update, stopping."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe.psft.checkpoints import INTERVAL, MILESTONE, ResumePlan, current_save_kind
from recipe.psft.exit_codes import AlreadyFinished, Diverged, Preempted
from recipe.psft.long_run import LongRunGuard
from recipe.psft.preemption import PreemptionGuard


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """``begin`` installs the preemption guard's handlers: put the test process's back."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def guard(save_freq: int = 2, resume_step: int = 0, minutes: float = 0.0) -> tuple[LongRunGuard, list[int]]:
    config = OmegaConf.create(
        {"trainer": {"default_local_dir": "/ckpt"}, "psft": {"save_interval_minutes": minutes, "max_nonfinite": 3}}
    )
    plan = ResumePlan(Path(f"/ckpt/global_step_{resume_step}"), resume_step) if resume_step else ResumePlan()
    saved: list[int] = []
    g = LongRunGuard(config, plan, PreemptionGuard())
    g.begin(resume_step, save=saved.append, save_freq=save_freq)
    return g, saved


def finite() -> dict:
    return {"loss": [1.0], "grad_norm": 1.0}


def test_saves_every_save_freq_steps_and_the_last():
    g, saved = guard(save_freq=2)
    for step in range(1, 6):
        g.after_update(step, 0, finite())
        g.end_of_step(step, is_last_step=step == 5)
    assert saved == [2, 4, 5]


def test_a_step_with_a_skipped_update_moves_its_save_to_the_next_clean_step():
    g, saved = guard(save_freq=2)
    g.end_of_step(1, False)
    g.after_update(2, 1, {"loss": [math.nan], "grad_norm": math.nan})
    g.end_of_step(2, False)
    assert saved == []
    g.after_update(3, 0, finite())
    g.end_of_step(3, False)
    assert saved == [3]


def test_a_final_step_with_a_skipped_update_is_never_saved_as_the_result():
    g, saved = guard(save_freq=0)
    g.after_update(1, 0, {"loss": [math.inf], "grad_norm": 1.0})
    with pytest.raises(Diverged, match="final step 1"):
        g.end_of_step(1, is_last_step=True)
    assert saved == []


def test_a_signal_saves_the_step_in_progress_then_stops_with_the_signals_code():
    g, saved = guard(save_freq=100)
    g.end_of_step(1, False)
    g.preemption.signum = signal.SIGTERM
    with pytest.raises(Preempted, match="saved a checkpoint of step 2") as stopped:
        g.end_of_step(2, False)
    assert saved == [2] and stopped.value.exit_code == 143


def test_a_signal_before_the_first_step_stops_at_once_naming_the_last_checkpoint():
    config = OmegaConf.create({"trainer": {"default_local_dir": "/ckpt"}, "psft": {}})
    g = LongRunGuard(config, ResumePlan(Path("/ckpt/global_step_4"), 4), PreemptionGuard())
    g.preemption.signum = signal.SIGINT
    with pytest.raises(Preempted, match="before its first step; the last checkpoint is step 4"):
        g.begin(4, save=lambda step: None, save_freq=1)


def test_a_checkpoint_at_the_end_means_nothing_to_do():
    g, _ = guard(resume_step=6)
    with pytest.raises(AlreadyFinished, match="at step 6 and this run ends at step 6"):
        g.check_not_finished(6)
    g.check_not_finished(7)  # more steps asked: trains on


def test_interval_saves_follow_the_clock(monkeypatch):
    import recipe.psft.long_run as long_run

    now = [1000.0]
    monkeypatch.setattr(long_run.time, "monotonic", lambda: now[0])
    g, saved = guard(save_freq=0, minutes=1.0)
    g.end_of_step(1, False)
    now[0] += 61
    g.end_of_step(2, False)
    g.end_of_step(3, False)
    assert saved == [2]


def test_each_save_says_whether_it_is_a_milestone_or_an_interval_save(monkeypatch):
    """The kind the checkpoint handler records (and retention reads): save_freq steps, the final step and
    a milestone postponed by a skipped update are milestones; time-interval saves are not."""
    config = OmegaConf.create(
        {"trainer": {"default_local_dir": "/ckpt"}, "psft": {"save_interval_minutes": 1e-9, "max_nonfinite": 3}}
    )
    kinds: dict[int, str] = {}
    g = LongRunGuard(config, ResumePlan(), PreemptionGuard())
    g.begin(0, save=lambda step: kinds.__setitem__(step, current_save_kind()), save_freq=3)
    for step in range(1, 8):
        g.after_update(step, 0, {"loss": [math.nan], "grad_norm": math.nan} if step == 6 else finite())
        g.end_of_step(step, is_last_step=step == 7)
    assert kinds == {1: INTERVAL, 2: INTERVAL, 3: MILESTONE, 4: INTERVAL, 5: INTERVAL, 7: MILESTONE}
    assert current_save_kind() == MILESTONE  # outside a save: the default


def test_a_postponed_milestone_stays_a_milestone():
    config = OmegaConf.create({"trainer": {"default_local_dir": "/ckpt"}, "psft": {"max_nonfinite": 3}})
    kinds: dict[int, str] = {}
    g = LongRunGuard(config, ResumePlan(), PreemptionGuard())
    g.begin(0, save=lambda step: kinds.__setitem__(step, current_save_kind()), save_freq=2)
    g.after_update(2, 0, {"loss": [math.nan], "grad_norm": math.nan})
    g.end_of_step(2, False)
    g.after_update(3, 0, finite())
    g.end_of_step(3, False)
    assert kinds == {3: MILESTONE}
