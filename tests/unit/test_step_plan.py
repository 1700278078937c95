"""The step plan: which loss, which rows get the snapshot pass, which updates are probed."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from recipe.psft.step_plan import STEP_SEED_STRIDE, plan_step, update_schedule


def psft(**overrides) -> object:
    settings = {
        "loss_mode": "psft",
        "mini_batch_size": 2,
        "epochs": 1,
        "shuffle_mini_batches": True,
        "snapshot": "step",
        "skip_first_snapshot": True,
        "sft_warmup_steps": 0,
        "token_metrics": True,
        "batch_entropy": True,
        "update_token_metrics": False,
    }
    return OmegaConf.create({**settings, **overrides})


def test_psft_step_snapshots_every_row_but_the_first_mini_batch_which_its_own_forward_probes():
    plan = plan_step(psft(), batch_size=8, step=3, seed=7, fused_kernels=False)
    assert plan.mode == "psft" and plan.snapshot and not plan.initial_snapshot
    assert len(plan.schedule) == 4
    assert plan.pass_rows == sorted(set(range(8)) - plan.first_rows)
    assert plan.probe_first and plan.probes(0) and not plan.probes(1)
    assert not plan.gets_snapshot_log_probs(0) and all(plan.gets_snapshot_log_probs(u) for u in (1, 2, 3))
    # the step's order is the one update_schedule gives for the step's seed
    expected = update_schedule(8, 2, 1, True, seed=7 * STEP_SEED_STRIDE + 3)
    assert [s.tolist() for s in plan.schedule] == [s.tolist() for s in expected]


def test_without_skip_first_the_pass_covers_every_row_and_no_update_is_probed():
    plan = plan_step(psft(skip_first_snapshot=False), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert plan.pass_rows == list(range(8))
    assert not plan.probe_first and not any(plan.probes(u) for u in range(4))
    assert plan.gets_snapshot_log_probs(0)


@pytest.mark.parametrize("mode", ["sft", "dft", "sft_kl", "asft"])
def test_modes_without_snapshot_take_no_snapshot_log_probs(mode):
    plan = plan_step(psft(loss_mode=mode), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert not plan.snapshot and not any(plan.gets_snapshot_log_probs(u) for u in range(4))


def test_sft_warmup_steps_train_sft_then_the_configured_loss():
    settings = psft(sft_warmup_steps=2)
    assert [plan_step(settings, 8, step, 0, False).mode for step in (1, 2, 3)] == ["sft", "sft", "psft"]


def test_initial_snapshot_takes_old_log_probs_from_the_reference_and_runs_no_snapshot_pass():
    plan = plan_step(psft(snapshot="initial", token_metrics=False), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert plan.initial_snapshot and not plan.snapshot and plan.pass_rows == []


def test_k1_psft_runs_no_forward_pass_when_metrics_are_off():
    plan = plan_step(psft(mini_batch_size=8, token_metrics=False), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert plan.pass_rows == [] and len(plan.schedule) == 1


def test_fused_kernels_measure_every_row_in_the_pass_and_probe_no_forward():
    plan = plan_step(psft(), batch_size=8, step=1, seed=0, fused_kernels=True)
    assert plan.pass_rows == list(range(8)) and not plan.probe_first and not plan.probes(0)


def test_update_token_metrics_probes_every_update():
    plan = plan_step(psft(update_token_metrics=True), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert all(plan.probes(u) for u in range(4))
