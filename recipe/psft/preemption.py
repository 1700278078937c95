"""Graceful stop on SIGTERM / SIGINT: finish the step in progress, checkpoint it, exit 143 / 130.

Schedulers (SLURM, Kubernetes, ``ray job stop``) send SIGTERM before killing a job; Ctrl-C sends
SIGINT. The first signal only sets a flag: the training loop finishes the step it is in, saves a
checkpoint of it and raises :class:`~recipe.psft.exit_codes.Preempted`. A second signal raises
:class:`StopNow` wherever the driver is (also inside a blocking ``ray.get``), so the process exits at
once without a checkpoint of the step in progress.

Ray's own SIGTERM handler (installed by ``ray.init`` for a local instance) kills the local Ray
processes and exits 1 at once; :meth:`PreemptionGuard.install` must therefore run again after Ray
starts. Ray's worker processes block SIGINT, so Ctrl-C reaches only the driver.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from .exit_codes import signal_exit_code

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopNow(BaseException):
    """A second stop signal: leave at once (BaseException, so no ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum
        self.exit_code = signal_exit_code(signum)


class PreemptionGuard:
    """Turns the first SIGTERM/SIGINT into a request to stop after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """(Re)install the handlers; only possible from the main thread, otherwise a no-op."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in HANDLED_SIGNALS:
            previous = signal.signal(signum, self._handle)
            if previous is not self._handle:
                self._previous.setdefault(signum, previous)

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"[psft] {name} again: exiting now without saving the step in progress", file=sys.stderr, flush=True)
            raise StopNow(signum)
        self.signum, self.received_at = signum, time.monotonic()
        print(
            f"[psft] {name} received: finishing the current step, saving a checkpoint of it, then exiting with "
            f"code {signal_exit_code(signum)}. Send {name} again to exit at once without saving.",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> PreemptionGuard:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
