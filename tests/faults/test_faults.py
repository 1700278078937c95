"""Fault injection: each test breaks a run the way a user or a cluster would, then checks nothing was lost.

Every resumed run must end with weights, loss and grad-norm series equal to an uninterrupted run's
(``reference``, shared by the session: tests/faults/conftest.py), one continuous file log, and messages
that name what went wrong. Runs: tiny model, 2 FSDP CPU ranks, 4 steps (see fault_harness).

Default tier: the loopback check, SIGTERM -> checkpoint -> exact resume, a changed config refused before
Ray. Slow tier (``-m slow``, CI): the other faults.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
from faults.fault_harness import STEPS
from trainer_harness import (
    Trainer,
    assert_continuous_log,
    assert_same_series,
    assert_same_weights,
    run_trainer,
    seconds_to_exit,
)


@pytest.fixture(scope="module")
def args(fault_args):
    return fault_args


def assert_resumed_like_reference(resumed, reference) -> None:
    assert resumed.returncode == 0, resumed.output[-5000:]
    assert_continuous_log(resumed, STEPS)
    assert_same_weights(resumed.final_weights(), reference.final_weights())
    assert_same_series(resumed, reference)


@pytest.fixture(scope="module")
def preempted(args, tmp_path_factory):
    """A run stopped by SIGTERM once step 2 is logged (the driver is in step 3 by then). Its listening
    sockets are read at step 1, while every process is up, so the scan cannot delay the signal.
    Tests that resume it copy its folder first."""
    run_dir = tmp_path_factory.mktemp("preempted")
    trainer = Trainer(run_dir, args(run_dir))
    trainer.wait_for_step(1)
    sockets = trainer.listening_sockets()
    trainer.wait_for_step(2)
    trainer.signal(signal.SIGTERM)
    return run_dir, trainer.finish(), sockets


def test_local_ray_listens_on_loopback_only(preempted):
    _, _, sockets = preempted
    print(f"listening sockets of the run: {len(sockets)}")
    for address, title in sorted(sockets.items()):
        print(f"  {address}  {title}")
    assert sockets, "no listening socket found: the probe is broken"
    exposed = {a: t for a, t in sockets.items() if not a.startswith(("127.", "::1:", "::ffff:127."))}
    # torch.distributed's rendezvous store (rank 0's TCPStore) listens on every interface and has no
    # bind-address option; every Ray process (GCS, raylet, agents, driver, workers' Ray servers) must not.
    ray_exposed = {a: t for a, t in exposed.items() if "TrainingWorker" not in t}
    assert not ray_exposed, f"Ray listening on non-loopback addresses: {ray_exposed}"
    assert len(exposed) <= 1, exposed


def test_sigterm_checkpoints_the_step_in_progress_and_resumes_exactly(args, reference, preempted, tmp_path):
    original, stopped, _ = preempted
    assert stopped.returncode == 143, stopped.output[-5000:]
    last = stopped.tracker()
    assert last in (2, 3) and f"stopped by SIGTERM after step {last}" in stopped.output
    assert stopped.train_steps()[-1] == last  # finished the step it was in, then saved exactly it
    print(f"SIGTERM -> exit 143 in {seconds_to_exit(stopped):.1f} s, checkpoint of step {last}")

    run_dir = tmp_path / "run"  # the user's folder: checkpoints and file log (the fixture stays untouched)
    shutil.copytree(original, run_dir)
    resumed = run_trainer(run_dir, args(run_dir))
    assert f"resuming from {run_dir / 'ckpt' / f'global_step_{last}'}" in resumed.output
    assert_resumed_like_reference(resumed, reference)
    assert resumed.checkpoints() == ["global_step_3", "global_step_4"]  # max_ckpt_to_keep=2 across restarts

    again = run_trainer(run_dir, args(run_dir))
    assert again.returncode == 0 and "nothing to do" in again.output, again.output[-3000:]
    assert "Started a local Ray instance" not in again.output
    assert again.checkpoints() == ["global_step_3", "global_step_4"] and again.tracker() == STEPS
    assert_continuous_log(again, STEPS)


@pytest.mark.slow
def test_second_sigint_exits_at_once_without_a_checkpoint_of_the_step(args, reference, tmp_path):
    trainer = Trainer(tmp_path, args(tmp_path))
    trainer.wait_for_step(1)
    tracker = tmp_path / "ckpt" / "latest_checkpointed_iteration.txt"
    trainer.wait_until(tracker.exists, "the checkpoint of step 1", timeout=120)  # the driver is now in step 2
    trainer.signal(signal.SIGINT)
    # A second signal sent while the first is still pending merges with it: wait until it was seen.
    trainer.wait_until(lambda: "SIGINT received" in trainer.tail(), "the first SIGINT's acknowledgement", 60)
    trainer.signal(signal.SIGINT)
    stopped = trainer.finish(timeout=120)
    assert stopped.returncode == 130, stopped.output[-5000:]
    assert "SIGINT again: exiting now" in stopped.output
    assert stopped.tracker() == 1 and stopped.checkpoints() == ["global_step_1"]  # step 2 not saved
    print(f"second SIGINT -> exit 130 in {seconds_to_exit(stopped):.1f} s")
    assert_resumed_like_reference(run_trainer(tmp_path, args(tmp_path)), reference)


def test_changed_run_settings_stop_before_ray(args, preempted, tmp_path):
    run_dir, _, _ = preempted
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "ckpt", copy / "ckpt")
    start = time.monotonic()
    changed = run_trainer(copy, args(copy, "data.train_batch_size=4", "psft.loss_mode=sft"))
    assert changed.returncode == 2, changed.output[-3000:]
    assert "data.train_batch_size: checkpoint has 8, this run has 4" in changed.output
    assert "psft.loss_mode: checkpoint has 'psft', this run has 'sft'" in changed.output
    assert "Started a local Ray instance" not in changed.output
    print(f"changed config refused in {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(args, reference, tmp_path):
    """A 3-step run (one shuffled epoch of train24) stopped cleanly, then extended to step 4: once from an
    intact copy (resume at an epoch boundary), once with its step-3 shard truncated (falls back to step 2,
    mid-epoch). Both must end exactly as the uninterrupted 4-step run."""
    run_dir, clean = tmp_path / "truncated", tmp_path / "clean"
    first = run_trainer(run_dir, args(run_dir, "trainer.total_training_steps=3"))
    assert first.returncode == 0, first.output[-5000:]
    shutil.copytree(run_dir, clean)

    extended = run_trainer(clean, args(clean))
    assert f"resuming from {clean / 'ckpt' / 'global_step_3'}" in extended.output
    assert_resumed_like_reference(extended, reference)

    shard = run_dir / "ckpt" / "global_step_3" / "model_world_size_2_rank_1.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # a half-written file, as after a crash mid-copy
    resumed = run_trainer(run_dir, args(run_dir))
    assert "global_step_3 is not usable: model_world_size_2_rank_1.pt has 100 bytes" in resumed.output
    assert "resuming from" in resumed.output and "global_step_2 (step 2), the newest complete" in resumed.output
    assert_resumed_like_reference(resumed, reference)


@pytest.mark.slow
def test_divergence_stops_naming_step_update_metric_without_a_checkpoint(args, tmp_path):
    result = run_trainer(
        tmp_path,
        args(tmp_path, "optim.lr=1e30", "optim.lr_warmup_steps=10", "psft.max_nonfinite=4"),
    )
    assert result.returncode == 3, result.output[-5000:]
    assert "diverged at step" in result.output and "update" in result.output
    assert "psft.max_nonfinite=4" in result.output
    # Steps with a skipped update are neither checkpointed nor advance the LR schedule.
    logged = {e["step"]: e["data"] for e in result.log if "train/loss" in e["data"]}
    dirty = [s for s, d in logged.items() if d["train/nonfinite_updates"] > 0]
    assert dirty, logged
    lrs = [logged[s]["train/lr"] for s in dirty]
    assert len(set(lrs)) == 1, lrs  # warm-up would raise the lr every step otherwise
    for step in dirty:
        assert not (tmp_path / "ckpt" / f"global_step_{step}").exists()


@pytest.mark.slow
def test_disk_full_during_save_keeps_the_previous_checkpoint(args, reference, tmp_path):
    mount = tmp_path / "ckpt"
    mount.mkdir()
    # One checkpoint of this run is about 3.3 MB: room for one, not for a second beside it. mode=0700: a
    # tmpfs root is 1777 by default, and a folder others can write is refused (checkpoints.check_trusted).
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m,mode=0700", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs permission to mount a small tmpfs (the simulated full disk)")
    try:
        full = run_trainer(tmp_path, args(tmp_path))
        assert full.returncode == 4, full.output[-5000:]
        assert f"saving the checkpoint of step 2 to {mount / 'global_step_2'} failed" in full.output
        assert "MiB free on the filesystem of" in full.output and "previous checkpoint" in full.output
        assert full.checkpoints() == ["global_step_1"] and full.tracker() == 1
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)  # the user frees space
        assert_resumed_like_reference(run_trainer(tmp_path, args(tmp_path)), reference)
    finally:
        subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.slow
def test_killed_worker_stops_the_driver_naming_it_then_resumes(args, reference, tmp_path):
    trainer = Trainer(tmp_path, args(tmp_path))
    trainer.wait_for_step(2)
    workers = trainer.workers()
    assert len(workers) == 2, [w.cmdline() for w in workers]
    trainer.events["fault"] = time.monotonic()
    victim = workers[1]
    victim.kill()
    lost = trainer.finish(timeout=180)
    assert lost.returncode == 5, lost.output[-5000:]
    assert "a training worker or its node died during step" in lost.output
    assert f"pid: {victim.pid}" in lost.output  # names the dead worker
    print(f"killed worker -> exit 5 in {seconds_to_exit(lost):.1f} s")
    assert_resumed_like_reference(run_trainer(tmp_path, args(tmp_path)), reference)
