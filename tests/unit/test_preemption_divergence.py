"""The signal guard (first signal = request, second = stop now) and the divergence counter."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
from time_limits import limit

from recipe.psft.divergence import DivergenceGuard, first_nonfinite
from recipe.psft.exit_codes import Diverged, Preempted
from recipe.psft.preemption import PreemptionGuard


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_first_signal_requests_a_stop(capsys):
    before = signal.getsignal(signal.SIGTERM)
    err: list[str] = []  # readouterr() consumes what it returns: keep every poll's part

    def printed(text: str) -> bool:
        err.append(capsys.readouterr().err)
        return text in "".join(err)

    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: guard.requested) and guard.signum == signal.SIGTERM
        assert wait_for(lambda: printed("SIGTERM received: finishing the current step")), err
        assert "then exiting with code 143" in "".join(err)
    assert signal.getsignal(signal.SIGTERM) is before
    assert Preempted("x", signal.SIGINT).exit_code == 130


# The driver waits in a blocking call (ray.get) for most of a step: the second signal must end it there.
BLOCKED_DRIVER = """
import signal, sys, time
from recipe.psft.preemption import PreemptionGuard
guard = PreemptionGuard()
guard.install()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_at_once_even_while_blocked(signum):
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_DRIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    name = signal.Signals(signum).name
    proc.send_signal(signum)
    # The kernel merges a signal into one still pending: send the second once the first was seen.
    assert f"{name} received: finishing the current step" in proc.stderr.readline()
    start = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert time.monotonic() - start < limit(10)
    assert f"{name} again: exiting now" in err


def test_guard_survives_a_handler_replaced_by_ray_init():
    guard = PreemptionGuard()
    guard.install()
    signal.signal(signal.SIGTERM, lambda *_: None)  # what ray.init does
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: guard.requested)
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
