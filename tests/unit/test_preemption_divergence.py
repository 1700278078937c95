"""The signal guard (first signal = request, second = stop now) and the divergence counter."""

from __future__ import annotations

import math
import os
import signal

import pytest

from recipe.psft.divergence import DivergenceGuard, first_nonfinite
from recipe.psft.exit_codes import Diverged, Preempted
from recipe.psft.preemption import PreemptionGuard, StopNow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_requests_a_stop_second_stops_now(signum, capsys):
    before = signal.getsignal(signum)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signum)
        assert guard.requested and guard.signum == signum
        assert f"exiting with code {128 + signum}" in capsys.readouterr().err
        with pytest.raises(StopNow) as err:
            os.kill(os.getpid(), signum)
        assert err.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is before
    assert Preempted("x", signum).exit_code == 128 + signum


def test_guard_survives_a_handler_replaced_by_ray_init():
    guard = PreemptionGuard()
    guard.install()
    signal.signal(signal.SIGTERM, lambda *_: None)  # what ray.init does
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_nonfinite_metrics_are_found():
    assert first_nonfinite({"loss": 1.0, "grad_norm": 2.0, "nll": [math.nan]}) is None  # only watched keys
    assert first_nonfinite({"loss": 1.0, "grad_norm": math.inf}) == ("grad_norm", math.inf)
    key, value = first_nonfinite({"loss": [[1.0], [math.nan]], "grad_norm": 1.0})
    assert key == "loss" and math.isnan(value)


def test_guard_counts_and_stops_naming_step_update_metric(capsys):
    guard = DivergenceGuard(max_nonfinite=2)
    guard.check_update(5, 0, {"loss": 1.0, "grad_norm": 1.0})
    guard.check_update(5, 1, {"loss": 1.0, "grad_norm": math.nan})
    assert guard.count == 1 and guard.step_had_skips(5) and not guard.step_had_skips(4)
    assert "step 5, update 2: grad_norm=nan" in capsys.readouterr().err
    with pytest.raises(Diverged, match=r"step 6, update 1: loss=inf .*psft.max_nonfinite=2") as err:
        guard.check_update(6, 0, {"loss": math.inf, "grad_norm": 1.0})
    assert err.value.exit_code == 3
