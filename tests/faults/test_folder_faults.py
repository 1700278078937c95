"""Faults of ownership and paths (issue 22): two runs on one folder, a lease left by a dead host, a finished
run rerun with another lr, milestones after interval saves, a relative folder under a Ray job.

Slow tier. One real training run (the fault configuration: 4 steps, 2 CPU ranks) carries the first four:
it takes over an expired lease, refuses a second run started while it trains, saves milestones and
interval checkpoints, ends with the reference run's weights, and is then rerun with another lr. The
relative-path fault stops before Ray.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from faults.fault_harness import STEPS
from trainer_harness import Trainer, assert_continuous_log, assert_same_weights, run_trainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

LEASE_S = 6


def foreign_lease(ckpt, renewed_ago: float, lease_s: float) -> None:
    """The lease of a run on another host of a shared filesystem, last renewed ``renewed_ago`` s ago."""
    ckpt.mkdir(parents=True, exist_ok=True)
    holder = {"host": "node-b", "pid": 777, "pid_start": "1", "boot_id": "b", "started": "2026-12-01T08:00:00+00:00",
              "lease_s": lease_s, "token": "0badc0de", "renewed": time.time() - renewed_ago}  # fmt: skip
    (ckpt / "psft_lock.json").write_text(json.dumps(holder))


def test_one_owner_per_folder_milestones_kept_and_a_finished_run_rerun_with_another_lr(fault_args, reference, tmp_path):
    run_dir = tmp_path / "a"
    ckpt = run_dir / "ckpt"
    # save_freq=2 milestones, an interval save after every other step, keep 2 milestones.
    args = fault_args(
        run_dir,
        "trainer.save_freq=2",
        "psft.save_interval_minutes=0.0001",
        "trainer.max_ckpt_to_keep=2",
        f"psft.lock_lease_seconds={LEASE_S}",
    )

    # 1. A lease held by a run on another host, fresh (its holder's lease: 10 min): refused, naming it.
    foreign_lease(ckpt, renewed_ago=0, lease_s=600)
    refused = run_trainer(tmp_path / "refused", args)
    assert refused.returncode == 2, refused.output[-3000:]
    assert "in use by another run: host node-b, pid 777, started 2026-12-01T08:00:00+00:00" in refused.output
    assert "Started a local Ray instance" not in refused.output

    # 2. That host died: once its lease is LEASE_S old, the next run takes the folder over.
    foreign_lease(ckpt, renewed_ago=LEASE_S + 1, lease_s=LEASE_S)
    a = Trainer(run_dir, args)
    a.wait_until(lambda: "taking over" in a.tail(), "the takeover of the expired lease", timeout=300)
    assert "its lease was last renewed" in a.tail()

    # 3. A second run on the same folder (another lr of a sweep), started while A holds it (A is starting
    # Ray and its workers now): refused within seconds.
    started = time.monotonic()
    second = run_trainer(tmp_path / "b", fault_args(run_dir, "optim.lr=2e-3"))
    refused_s = time.monotonic() - started
    assert second.returncode == 2, second.output[-3000:]
    holder = f"host {socket.gethostname()}, pid {a.proc.pid}, started 20"
    assert holder in second.output and "Started a local Ray instance" not in second.output
    print(f"second run on a held folder refused in {refused_s:.1f} s (process start included)")

    done = a.finish()
    assert done.returncode == 0, done.output[-5000:]
    assert_continuous_log(done, STEPS)
    assert_same_weights(done.final_weights(), reference.final_weights())  # B changed nothing
    assert not (ckpt / "psft_lock.json").exists()  # released at exit

    # 4. Milestones survive interval saves: steps 2 and 4 (save_freq, final) kept, interval 1 and 3 gone.
    kinds = {s: json.loads((ckpt / f"global_step_{s}" / "psft_checkpoint.json").read_text())["kind"] for s in (2, 4)}
    assert done.checkpoints() == ["global_step_2", "global_step_4"] and kinds == {2: "milestone", 4: "milestone"}
    saved = [int(s) for s in re.findall(r"Checkpoint of step (\d+) \(interval\) complete", done.output)]
    assert saved == [1, 3], done.output[-3000:]

    # 5. The finished run rerun with another lr: refused naming the key and both values, not "nothing to do".
    rerun = run_trainer(tmp_path / "rerun", fault_args(run_dir, "optim.lr=2e-3"))
    assert rerun.returncode == 2, rerun.output[-3000:]
    assert "optim.lr: checkpoint has 0.001, this run has 0.002" in rerun.output
    assert "nothing to do" not in rerun.output
    same = run_trainer(tmp_path / "same", args)
    assert same.returncode == 0 and "nothing to do" in same.output, same.output[-3000:]


def test_relative_folder_under_a_ray_job_is_refused_before_ray(fault_args, tmp_path):
    args = [a for a in fault_args(tmp_path) if not a.startswith("trainer.default_local_dir=")]
    env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}}'}  # what `ray job submit` sets (Ray 2.60)
    refused = run_trainer(tmp_path, [*args, "trainer.default_local_dir=checkpoints/psft/run"], env=env)
    assert refused.returncode == 2, refused.output[-3000:]
    assert "trainer.default_local_dir=checkpoints/psft/run is relative" in refused.output
    assert "psft.checkpoint_root=" in refused.output and "Started a local Ray instance" not in refused.output
    assert not (tmp_path / "checkpoints").exists()  # nothing written into the job's working directory
