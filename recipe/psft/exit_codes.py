"""Exit codes of ``python -m recipe.psft.main_psft`` and the exceptions that end a run with them.

A job scheduler or a resubmission script reads the code to decide what to do next:

- 0: trained to the configured end, or that end was already reached (nothing to do, said so).
- 2: bad config or data (named in the message), or a resume whose run-defining settings changed.
  Fix and rerun.
- 3: diverged: ``psft.max_nonfinite`` non-finite losses / grad norms (step, update and metric named);
  nothing was saved from it. Lower the lr; rerunning resumes from the last checkpoint.
- 4: checkpoint problem: a save failed (folder and error named; the previous checkpoint stays the
  latest), or the checkpoint folder holds checkpoints but none is usable. Free space / fix, rerun.
- 5: a worker process or node died (named). Rerun the same command once the cluster is whole: it resumes.
- 130 / 143: stopped by SIGINT / SIGTERM after finishing and checkpointing the step in progress.
  Rerun the same command: it resumes.

A second SIGINT/SIGTERM exits at once with the same 130/143, without checkpointing the step in progress.
"""

from __future__ import annotations

import signal

OK = 0
BAD_INPUT = 2
DIVERGED = 3
CHECKPOINT_FAILED = 4
WORKER_LOST = 5


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
