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
from trainer_harness import REPO

from recipe.psft.divergence import DivergenceGuard, first_nonfinite
from recipe.psft.exit_codes import Diverged, Preempted
from recipe.psft.preemption import HANDLED_SIGNALS, PreemptionGuard


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


def test_sigusr1_requests_a_stop_like_sigterm(capsys):
    """SLURM's --signal=USR1@N: the same request, exit code 128 + 10."""
    assert signal.SIGUSR1 in HANDLED_SIGNALS
    err: list[str] = []
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_for(lambda: guard.requested) and guard.signum == signal.SIGUSR1
        assert wait_for(lambda: err.append(capsys.readouterr().err) or "SIGUSR1 received: finishing" in "".join(err))
    assert "then exiting with code 138" in "".join(err)
    assert Preempted("x", signal.SIGUSR1).exit_code == 138


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


# Ctrl-C under `| tee`: tee dies with the driver's SIGINT, then the driver writes its step log, its
# "stopped" line and flushes at exit into a pipe without a reader. `marker` tells the test the request
# was seen (stdout and stderr are gone by then).
BROKEN_CONSOLE_DRIVER = """
import sys, time
from pathlib import Path
from recipe.psft.preemption import PreemptionGuard, tolerate_broken_pipes
tolerate_broken_pipes()
import logging
logging.basicConfig(stream=sys.stdout, level=logging.INFO)  # bound after, as Hydra's is
guard = PreemptionGuard()
guard.install()
print("ready", flush=True)
while not guard.requested:
    time.sleep(0.01)
Path(sys.argv[1]).write_text("requested")
for step in range(2000):  # the rest of the step: its console log, tqdm, Ray's worker lines
    print(f"step {step} " + "x" * 100)
    print(f"progress {step}", file=sys.stderr)
    logging.info("metrics %d", step)
if sys.argv[2] == "wait":
    time.sleep(60)  # a second signal must still end the process at once
print("[psft] stopped: stopped by SIGINT after step 2", file=sys.stderr, flush=True)
sys.exit(130)
"""


@pytest.mark.parametrize("then", ["exit", "wait"])
def test_a_broken_console_turns_no_clean_stop_into_a_crash(then, tmp_path):
    marker = tmp_path / "requested"
    proc = subprocess.Popen([sys.executable, "-c", BROKEN_CONSOLE_DRIVER, str(marker), then], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    proc.stdout.close()  # tee is gone
    proc.stderr.close()
    proc.send_signal(signal.SIGINT)
    assert wait_for(marker.exists, timeout=limit(20))
    if then == "wait":
        time.sleep(0.5)  # into the sleep, past the writes
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130  # os._exit from the watcher thread, which survived EPIPE
        assert time.monotonic() - start < limit(10)
    else:
        assert proc.wait(timeout=60) == 130  # neither 1 (BrokenPipeError) nor 120 (failed flush at exit)


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
