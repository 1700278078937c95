"""Exit codes of the project's command lines, in one table, and the exceptions that end a training run
with them.

A job scheduler or a resubmission script reads the code to decide what to do next. A code means one
thing in every command: ``python -m recipe.psft.main_psft`` (the trainer), ``python -m evaluation.eval``
and ``python -m evaluation.over_training`` (evaluation), ``prepare_data.py`` (data):

- 0 ``OK``: done. Trainer: trained to the configured end, or that end was already reached (nothing to
  do, said so).
- 2 ``BAD_INPUT``: bad config, data or options (named in the message). Trainer: also a resume whose
  run-defining settings changed (also when the run is finished), or a checkpoint folder that another
  live run holds (``folder_lock.FolderLocked``, naming host, pid and start time). Evaluation: also an
  output folder that holds another run, is being written by another process, or has a damaged
  ``samples.jsonl``. Fix and rerun.
- 3 ``DIVERGED`` (trainer): ``psft.max_nonfinite`` non-finite losses / grad norms (step, update and
  metric named); nothing was saved from it. Lower the lr; rerunning resumes from the last checkpoint.
- 4 ``CHECKPOINT_FAILED`` (trainer): a save failed (folder and error named; the previous checkpoint
  stays the latest), or the checkpoint folder holds checkpoints but none is usable. Free space / fix, rerun.
- 5 ``WORKER_LOST`` (trainer): a worker process or node died (named). Rerun the same command once the
  cluster is whole: it resumes.
- 6 ``INCOMPLETE`` (evaluation): some samples failed or are missing (recorded as errors, counted as
  incorrect). Rerunning the same command retries exactly those.
- 7 ``SOURCE_UNAVAILABLE`` (``prepare_data.py``): a Hub source cannot be reached. Use ``--source
  builtin`` or ``--source local`` offline.
- 130 / 143 / 138 (128 + the signal): stopped by SIGINT / SIGTERM / SIGUSR1 (trainer only: SLURM's
  ``--signal=USR1@N`` warning). Trainer: after finishing and checkpointing the step in progress;
  evaluation: finished samples are kept. Rerun the same command: it resumes.

A second stop signal to the trainer exits at once with its 128 + signal code, without checkpointing the
step in progress.
"""

from __future__ import annotations

import signal

OK = 0
BAD_INPUT = 2
DIVERGED = 3
CHECKPOINT_FAILED = 4
WORKER_LOST = 5
INCOMPLETE = 6
SOURCE_UNAVAILABLE = 7
INTERRUPTED = 128 + signal.SIGINT  # 130; see signal_exit_code


def signal_exit_code(signum: int) -> int:
    """The shell convention for death by a signal: 128 + signal number (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


class RunStopped(Exception):
    """A run that ends early on purpose, with a message for the user and an exit code."""

    exit_code = 1


class Diverged(RunStopped):
    exit_code = DIVERGED


class CheckpointError(RunStopped):
    exit_code = CHECKPOINT_FAILED


class WorkerLost(RunStopped):
    exit_code = WORKER_LOST


class ResumeMismatch(RunStopped):
    exit_code = BAD_INPUT


class AlreadyFinished(RunStopped):
    """The checkpoint to resume is already at (or past) the configured end: nothing to train."""

    exit_code = OK


class Preempted(RunStopped):
    """Stopped by a signal; the message says which step the last checkpoint holds."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = signal_exit_code(signum)
