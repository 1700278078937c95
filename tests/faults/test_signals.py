"""Signals as schedulers send them: to the driver's process group, to every process of the job, through
scripts/sbatch_psft.sh, and Ctrl-C under ``| tee``.

The driver-only SIGTERM of test_faults.py is what a careful supervisor sends; clusters send more:
``kill -- -PGID`` reaches the driver's group (the local Ray's GCS, raylet and agents are in it), SLURM's
scancel and time limit reach every process of the job (the TrainingWorkers too), and a terminal's Ctrl-C
reaches the whole pipeline, so ``tee`` dies and the driver's console is gone. Each must still end with the
step in progress finished and checkpointed, the documented exit code, and a rerun that ends with the
uninterrupted run's weights (``reference``, shared by the session). Slow tier: 2 trainer runs per test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from faults.test_faults import assert_resumed_like_reference
from trainer_harness import _LIVE, REPO, Run, Trainer, run_trainer, seconds_to_exit

from psft_assets.trainer_process import trainer_command, trainer_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # two runs, plus the session reference first

SBATCH = REPO / "scripts" / "sbatch_psft.sh"


@pytest.fixture(scope="module")
def args(fault_args):
    return fault_args


class Launched(Trainer):
    """A trainer started through ``command`` (a wrapper that runs it, or the trainer itself), in its own
    session, with the harness's environment, output file and file log: ``wait_for_step``, ``finish``,
    ``kill`` as for ``Trainer``. ``self.proc`` is the command's process. ``tee``: its stdout and stderr go
    through a ``tee`` (the next process of a shell pipeline), which writes the output file."""

    def __init__(self, run_dir: Path, command: list[str], env: dict[str, str] | None = None, tee: bool = False):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.log_path = run_dir, run_dir / "metrics.jsonl"
        self.output_path = run_dir / f"output_{time.time_ns()}.txt"
        self.started = time.monotonic()
        self.events: dict[str, float] = {}
        self.tee: subprocess.Popen | None = None
        with open(self.output_path, "w") as output:
            self.proc = subprocess.Popen(
                command,
                cwd=run_dir,
                env=trainer_env(self.log_path, env),
                stdout=subprocess.PIPE if tee else output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _LIVE.add(self)
            if tee:  # (it cannot join the trainer's group, which is in another session: signal it by pid)
                # SIGINT back to its default: a job started in the background by a non-interactive shell
                # (CI, nohup ... &) inherits SIGINT ignored, while a terminal's tee dies of it.
                self.tee = subprocess.Popen(
                    ["tee"],
                    stdin=self.proc.stdout,
                    stdout=output,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                )
                self.proc.stdout.close()  # tee holds the only read end, as in a shell pipeline

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]


def ray_processes(processes: list[psutil.Process]) -> dict[str, list[int]]:
    """The local Ray's processes among ``processes``, by kind (so a test can show a signal reached them)."""
    kinds: dict[str, list[int]] = {}
    for proc in processes:
        try:
            line = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for kind in ("gcs_server", "raylet", "TrainingWorker"):
            if kind in line:
                kinds.setdefault(kind, []).append(proc.pid)
    return kinds


def assert_stopped_with_a_checkpoint(stopped: Run, code: int, name: str | None) -> int:
    """Exit ``code``, the step in progress finished and checkpointed (named in the output when ``name``)."""
    assert stopped.returncode == code, stopped.output[-5000:]
    last = stopped.tracker()
    assert last is not None and last >= 1, stopped.output[-5000:]
    assert stopped.train_steps()[-1] == last  # finished the step it was in, then saved exactly it
    if name:
        assert f"stopped by {name} after step {last}" in stopped.output, stopped.output[-5000:]
    return last


def sbatch_env(tmp_path: Path) -> dict[str, str]:
    """What SLURM gives the batch script, with ``scontrol`` a stand-in that records its arguments."""
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol_calls"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "PSFT_ROOT": str(REPO)}


def test_sigterm_to_the_process_group_checkpoints_and_resumes_exactly(args, reference, tmp_path):
    """``kill -- -PGID``: the driver leads its group (own session), and the local Ray's GCS and raylet are in it."""
    trainer = Trainer(tmp_path, args(tmp_path))
    trainer.wait_for_step(1)
    in_group = [p for p in psutil.Process(trainer.proc.pid).children(recursive=True) if _pgid(p) == trainer.proc.pid]
    kinds = ray_processes(in_group)
    assert "gcs_server" in kinds and "raylet" in kinds, kinds  # the group signal reaches Ray, not only the driver
    trainer.events["fault"] = time.monotonic()
    os.killpg(trainer.proc.pid, signal.SIGTERM)
    stopped = trainer.finish(timeout=300)
    last = assert_stopped_with_a_checkpoint(stopped, 143, "SIGTERM")
    print(f"SIGTERM to the process group ({len(in_group) + 1} processes) -> exit 143 in "
          f"{seconds_to_exit(stopped):.1f} s, checkpoint of step {last}")  # fmt: skip
    resumed = run_trainer(tmp_path, args(tmp_path))
    assert f"resuming from {tmp_path / 'ckpt' / f'global_step_{last}'}" in resumed.output
    assert_resumed_like_reference(resumed, reference)


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except ProcessLookupError:
        return None


def test_ctrl_c_under_tee_checkpoints_although_the_console_is_gone(args, reference, tmp_path):
    """``python -m recipe.psft.main_psft ... 2>&1 | tee out`` and Ctrl-C: the terminal sends SIGINT to the
    whole foreground pipeline, tee dies, and every later console write of the driver meets a pipe without a
    reader (the step's log line, the stop message, the flush at exit)."""
    trainer = Launched(tmp_path, trainer_command(args(tmp_path)), tee=True)
    try:
        trainer.wait_for_step(1)
        trainer.events["fault"] = time.monotonic()
        # Ctrl-C: SIGINT to every process of the foreground job, tee first (the pipe dies before the driver
        # writes again), then the trainer's group (the driver and its local Ray).
        trainer.tee.send_signal(signal.SIGINT)
        assert trainer.tee.wait(timeout=60) == -signal.SIGINT
        os.killpg(trainer.proc.pid, signal.SIGINT)
        stopped = trainer.finish(timeout=300)
    finally:
        trainer.tee.kill()
    last = assert_stopped_with_a_checkpoint(stopped, 130, None)  # its console died with tee
    print(f"Ctrl-C under | tee -> exit 130 in {seconds_to_exit(stopped):.1f} s, checkpoint of step {last}")
    resumed = run_trainer(tmp_path, args(tmp_path))
    assert f"resuming from {tmp_path / 'ckpt' / f'global_step_{last}'}" in resumed.output
    assert_resumed_like_reference(resumed, reference)


@pytest.mark.parametrize("fault", ["scancel", "time_limit_warning"])
def test_sbatch_template_checkpoints_on_slurms_signals_and_its_rerun_resumes(fault, args, reference, tmp_path):
    """scripts/sbatch_psft.sh without SLURM, sent what SLURM sends. ``scancel`` (also the time limit and
    preemption): SIGTERM to every process of the job, the batch shell, the driver, the local Ray and the
    TrainingWorkers; no requeue. ``time_limit_warning``: ``--signal=B:USR1@N``, SIGUSR1 to the batch shell
    alone, which has the trainer checkpoint and stop, then requeues the job. The rerun of the template
    (what the requeued job runs) ends with the reference's weights."""
    env = sbatch_env(tmp_path)
    command = ["bash", str(SBATCH), "--", *trainer_command(args(tmp_path))]
    job = Launched(tmp_path, command, env)
    job.wait_for_step(1)
    job.events["fault"] = time.monotonic()
    if fault == "scancel":
        processes = job.tree()
        kinds = ray_processes(processes)
        assert {"gcs_server", "raylet", "TrainingWorker"} <= kinds.keys(), kinds
        for proc in processes:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        what = f"SIGTERM to every process of the job ({len(processes)})"
    else:
        os.kill(job.proc.pid, signal.SIGUSR1)
        what = "SIGUSR1 to the batch shell"
    stopped = job.finish(timeout=300)
    last = assert_stopped_with_a_checkpoint(stopped, 143, "SIGTERM")
    assert "SIGTERM again: exiting now" not in stopped.output  # one SIGTERM reached the trainer, not one per sender
    calls = tmp_path / "scontrol_calls"
    requeued = calls.read_text() if calls.exists() else ""
    assert requeued == ("requeue 4242\n" if fault == "time_limit_warning" else ""), stopped.output[-3000:]
    print(f"{what} -> exit 143 in {seconds_to_exit(stopped):.1f} s, checkpoint of step {last}")

    rerun = Launched(tmp_path, command, env).finish()
    assert f"resuming from {tmp_path / 'ckpt' / f'global_step_{last}'}" in rerun.output
    assert_resumed_like_reference(rerun, reference)
