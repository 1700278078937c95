"""Graceful stop on SIGTERM / SIGINT: finish the step in progress, checkpoint it, exit 143 / 130.

Schedulers (SLURM, Kubernetes, ``ray job stop``) send SIGTERM before killing a job; Ctrl-C sends
SIGINT. The first signal only sets a flag: the training loop finishes the step it is in, saves a
checkpoint of it and raises :class:`~recipe.psft.exit_codes.Preempted`. A second signal ends the
process at once (also while the driver waits inside a blocking ``ray.get``), with the same exit code
and without a checkpoint of the step in progress.

Ray's own SIGTERM handler (installed by ``ray.init`` for a local instance) kills the local Ray
processes and exits 1 at once; :meth:`PreemptionGuard.install` must therefore run again after Ray
starts. Ray's worker processes block SIGINT, so Ctrl-C reaches only the driver.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

from .exit_codes import signal_exit_code

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
    """Turns the first SIGTERM/SIGINT into a request to stop after the current step; the second exits.

    The driver spends most of a step blocked in ``ray.get``, where Python runs signal handlers only
    when the call returns, and merges signals that arrive meanwhile. So the signals are counted where
    they arrive: Python's C-level handler writes every signal number to a wakeup socket
    (``signal.set_wakeup_fd``), and a watcher thread reads it at once. The first sets the request;
    the second flushes the output and leaves with ``os._exit`` (local Ray processes are bound to the
    driver and go with it; a job's actors are cleaned up by Ray when their driver dies).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}
        self._previous_wakeup_fd: int | None = None
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._count = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """(Re)install the handlers; only possible from the main thread, otherwise a no-op."""
        if threading.current_thread() is not threading.main_thread():
            return
        if self._reader is None:
            self._reader, self._writer = socket.socketpair()
            self._writer.setblocking(False)
            threading.Thread(target=self._watch, name="psft-preemption", daemon=True).start()
        for signum in HANDLED_SIGNALS:
            previous = signal.signal(signum, self._handle)
            if previous is not self._handle:
                self._previous.setdefault(signum, previous)
        wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        if self._previous_wakeup_fd is None and wakeup != self._writer.fileno():
            self._previous_wakeup_fd = wakeup

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Python needs a handler for the wakeup fd to be written; the watcher thread does the work.
        return

    def _watch(self) -> None:
        assert self._reader is not None
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in HANDLED_SIGNALS:
                    self._arrived(signum)

    def _arrived(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._count += 1
        if self._count > 1:
            print(f"[psft] {name} again: exiting now without saving the step in progress", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(signal_exit_code(signum))
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
