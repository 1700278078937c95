"""Graceful stop on SIGTERM / SIGINT / SIGUSR1: finish the step in progress, checkpoint it, exit 128 + the signal.

Schedulers (SLURM, Kubernetes, ``ray job stop``) send SIGTERM before killing a job; SLURM's
``--signal=USR1@N`` sends SIGUSR1 as an advance warning; Ctrl-C sends SIGINT. The first signal only
sets a flag: the training loop finishes the step it is in, saves a checkpoint of it and raises
:class:`~recipe.psft.exit_codes.Preempted` (exit 143 / 130 / 138). A second signal ends the process at
once (also while the driver waits inside a blocking ``ray.get``), with the same exit code and without a
checkpoint of the step in progress.

Ray's own SIGTERM handler (installed by ``ray.init`` for a local instance) kills the local Ray
processes and exits 1 at once; :meth:`PreemptionGuard.install` must therefore run again after Ray
starts. Schedulers signal more than the driver (a process group, a process tree, SLURM's whole job):
the local Ray processes block these signals (``ray_local.start_local_ray``), as Ray's own processes
block SIGINT, so only the driver acts on them.

A stop must also survive a broken console: Ctrl-C under ``| tee`` kills tee too, after which every
write to stdout/stderr fails with EPIPE. :func:`tolerate_broken_pipes` sends such output to /dev/null
instead of raising, so the step still finishes and is saved.
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from types import FrameType
from typing import Any

from .exit_codes import signal_exit_code

# SIGUSR1: SLURM's --signal=USR1@N (the checkpoint idiom), N seconds before the time limit.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# What a local Ray instance of the trainer blocks (Ray itself already blocks SIGINT in its processes).
SHIELDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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
        # State first, output second: a console that is gone (Ctrl-C under `| tee`) must neither lose
        # the request nor kill this thread, which is what makes a second signal exit at once.
        name = signal.Signals(signum).name
        self._count += 1
        if self._count > 1:
            try:
                print(f"[psft] {name} again: exiting now without saving the step in progress", file=sys.stderr)
                sys.stderr.flush()
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            finally:
                os._exit(signal_exit_code(signum))
        self.signum, self.received_at = signum, time.monotonic()
        try:
            print(
                f"[psft] {name} received: finishing the current step, saving a checkpoint of it, then exiting "
                f"with code {signal_exit_code(signum)}. Send {name} again to exit at once without saving.",
                file=sys.stderr,
                flush=True,
            )
        except (OSError, ValueError):
            pass

    def __enter__(self) -> PreemptionGuard:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


class _TolerantWriter(io.RawIOBase):
    """A file descriptor that turns EPIPE into /dev/null: the reader (tee, a terminal pipe) is gone,
    so the output has nowhere to go, and failing the write would end the run instead."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            _discard_output(self._fd)
            return len(data)


def _discard_output(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _watch_pipes(fds: list[int]) -> None:
    """Wait until the reader of a stdout/stderr pipe is gone (the kernel flags the write end with
    POLLERR), then point the descriptor at /dev/null, so that writers that bypass sys.stdout/sys.stderr
    (objects bound before :func:`tolerate_broken_pipes`, C extensions) stop failing as well."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # no events asked for: only POLLERR / POLLHUP are reported
    while fds:
        for fd, _ in poller.poll():
            poller.unregister(fd)
            fds.remove(fd)
            _discard_output(fd)


_tolerating = False


def tolerate_broken_pipes() -> None:
    """Make stdout and stderr never raise BrokenPipeError: once the reader of either is gone, its output
    goes to /dev/null. Call before libraries bind ``sys.stdout``/``sys.stderr`` (logging handlers).

    Python ignores SIGPIPE, so a write to a pipe without a reader raises BrokenPipeError: from a print in
    the training loop that ends the run with exit 1 and no checkpoint, and a failed flush at exit turns
    any exit code into 120. The files (file log, checkpoints) are the run's record; the console is not.
    """
    global _tolerating
    if _tolerating:
        return
    _tolerating = True
    pipes = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # pytest's capture, an in-memory stream
            continue
        stream.flush()
        tolerant = io.TextIOWrapper(
            io.BufferedWriter(_TolerantWriter(fd)),
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=stream.line_buffering,
            write_through=getattr(stream, "write_through", False),
        )
        setattr(sys, name, tolerant)
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fd not in pipes:
            pipes.append(fd)
    if pipes:
        threading.Thread(target=_watch_pipes, args=(pipes,), name="psft-broken-pipe", daemon=True).start()
