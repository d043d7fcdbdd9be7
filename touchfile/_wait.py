"""One blocking wait for a lock, native or polling, that cancel() ends from any thread.

The native wait blocks in the kernel (see _native/touchfile.c). The polling
wait is the fallback where the native core cannot be used (not built,
TOUCHFILE_NATIVE=0, or a foreign handler on the interrupt signal): it retries
flock(LOCK_NB), sleeping on an Event so that cancel() still wakes it at once.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import threading
import time
import warnings

from . import _native
from ._native import BUSY, DEADLINE, NO_HANDLER, OK, STALE

# Polling backs off from 1 ms to 10 ms: a released lock is seen 5 ms late on
# average once the wait is long, for about 100 wake-ups a second.
POLL_FIRST = 0.001
POLL_MAX = 0.010

_warned = False


def py_try_lock(fd: int, op: int, path: bytes, dev: int, ino: int) -> int:
    """tf_try() in Python: one flock(LOCK_NB), then check path still names fd's file."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        return BUSY
    except OSError as error:  # as tf_try(): -errno (EBADF on NFS, say)
        return -(error.errno or errno.EIO)
    try:
        st = os.stat(path)
        if st.st_dev == dev and st.st_ino == ino:
            return OK
    except OSError:
        pass  # gone, or unreadable: reopening the path reports why
    fcntl.flock(fd, fcntl.LOCK_UN)
    return STALE


def _warn_no_handler() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"touchfile: signal {_native.SIGNAL} ({_signal_name()}) has a handler that is "
            "not touchfile's (or one installed with SA_RESTART, or it is ignored), so a "
            "blocked flock() cannot be interrupted; lock waits poll instead. Set "
            "TOUCHFILE_SIGNAL to a free signal (e.g. SIGRTMIN+4) to wait in the kernel again.",
            RuntimeWarning,
            stacklevel=5,
        )


def _signal_name() -> str:
    import signal

    try:
        return signal.Signals(_native.SIGNAL).name
    except ValueError:
        return f"SIGRTMIN+{_native.SIGNAL - signal.SIGRTMIN}"


class Wait:
    """A wait until ``deadline`` (time.monotonic(); math.inf for none)."""

    __slots__ = ("_event", "_native", "deadline", "reason")

    def __init__(self, deadline: float, native: bool) -> None:
        self.deadline = deadline
        self.reason = 0
        self._event = threading.Event()
        self._native: _native.Waiter | None = None
        if native:
            left = deadline - time.monotonic()
            self._native = _native.Waiter(-1.0 if left == math.inf else max(left, 0.0))

    def cancel(self, reason: int) -> None:
        """End the wait with reason (the first reason given wins)."""
        if not self.reason:
            self.reason = reason
        self._event.set()
        waiter = self._native
        if waiter is not None:
            waiter.cancel(reason)

    def run(self, fd: int, op: int, path: bytes, dev: int, ino: int) -> int:
        """Wait once; returns OK, STALE, INTERRUPTED, a reason, or -errno."""
        waiter = self._native
        if waiter is not None:
            rc = waiter.wait(fd, op, path, dev, ino)
            if rc != NO_HANDLER:
                return rc
            _warn_no_handler()
            self._native = None
        return self._poll(fd, op, path, dev, ino)

    def _poll(self, fd: int, op: int, path: bytes, dev: int, ino: int) -> int:
        delay = POLL_FIRST
        while True:
            if self.reason:
                return self.reason
            rc = py_try_lock(fd, op, path, dev, ino)
            if rc != BUSY:
                return rc
            left = self.deadline - time.monotonic()
            if left <= 0:
                return DEADLINE
            self._event.wait(min(delay, left))
            delay = min(delay * 2, POLL_MAX)
