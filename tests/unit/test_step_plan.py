"""The step plan: which loss, which rows get the snapshot pass, which updates are probed."""

from __future__ import annotations

import pytest
from psft_settings import psft_settings

from recipe.psft.step_plan import STEP_SEED_STRIDE, plan_step, update_schedule


def psft(**overrides):
    return psft_settings(**overrides)


def test_psft_step_snapshots_every_row_but_the_first_mini_batch_which_its_own_forward_probes():
    plan = plan_step(psft(), batch_size=8, step=3, seed=7, fused_kernels=False)
    assert plan.mode == "psft" and plan.snapshot and not plan.initial_snapshot
    assert len(plan.schedule) == 4
    first_rows = set(plan.schedule[0].tolist())
    assert plan.pass_rows == sorted(set(range(8)) - first_rows) and plan.measured_rows == first_rows
    assert plan.measures(0) and plan.probes(0) and not plan.probes(1)
    assert not plan.gets_snapshot_log_probs(0) and all(plan.gets_snapshot_log_probs(u) for u in (1, 2, 3))
    # the step's order is the one update_schedule gives for the step's seed
    expected = update_schedule(8, 2, 1, True, seed=7 * STEP_SEED_STRIDE + 3)
    assert [s.tolist() for s in plan.schedule] == [s.tolist() for s in expected]


def test_without_skip_first_the_pass_covers_every_row_and_no_update_is_probed():
    plan = plan_step(psft(skip_first_snapshot=False), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert plan.pass_rows == list(range(8))
    assert plan.measuring_updates == 0 and not any(plan.probes(u) for u in range(4))
    assert plan.gets_snapshot_log_probs(0)


@pytest.mark.parametrize("mode", ["sft", "dft", "sft_kl", "asft"])
def test_modes_without_snapshot_run_no_pass_and_measure_the_batch_in_their_first_passs_updates(mode):
    plan = plan_step(psft(loss_mode=mode, epochs=2), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert not plan.snapshot and not any(plan.gets_snapshot_log_probs(u) for u in range(8))
    assert plan.pass_rows == [] and plan.measuring_updates == 4 and plan.measured_rows == set(range(8))
    assert all(plan.probes(u) for u in range(4)) and not any(plan.probes(u) for u in range(4, 8))


def test_without_batch_entropy_modes_without_snapshot_measure_the_first_mini_batch_only():
    plan = plan_step(psft(loss_mode="sft", batch_entropy=False), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert plan.pass_rows == [] and plan.measured_rows == set(plan.schedule[0].tolist())


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
    assert plan.pass_rows == list(range(8)) and plan.measuring_updates == 0 and not plan.probes(0)


def test_update_token_metrics_probes_every_update():
    plan = plan_step(psft(update_token_metrics=True), batch_size=8, step=1, seed=0, fused_kernels=False)
    assert all(plan.probes(u) for u in range(4))
