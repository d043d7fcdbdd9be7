"""The contenders: touchfile, the kernel floor and touchfile's Python peers, behind one face.

Each adapter offers the same few calls, made the way a user of that library
writes them. acquire() returns False when the timeout passed or the wait was
cancelled. Every contender competes only with itself, on a lock file of its
own: fasteners takes POSIX record locks (``fcntl.lockf``), which never conflict
with ``flock()`` ones, and filelock's read/write lock is an SQLite database.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import filelock

import touchfile
from touchfile import Context, LockCancelled, LockTimeout, TouchFile

FOREVER = 2.0**31  # for libraries that have no "wait for ever" with polling


class Lock(Protocol):
    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool: ...
    def release(self) -> None: ...
    def loop(self, n: int) -> None: ...
    def canceller(self) -> tuple[Any, Callable[[], None]]: ...
    def close(self) -> None: ...


def _pairs(acquire: Callable[[], object], release: Callable[[], object], n: int) -> None:
    """n uncontended acquire+release pairs, through the library's own calls."""
    for _ in range(n):
        acquire()
        release()


def _no_cancel() -> tuple[Any, Callable[[], None]]:
    raise NotImplementedError("this library has no way to cancel a wait")


class TouchFileLock:
    """touchfile, with its native wait or (native=False) its polling fallback."""

    def __init__(self, path: str, native: bool = True, prefer_writers: bool = False) -> None:
        if native:
            self.tf = TouchFile(path, prefer_writers=prefer_writers)
        else:
            old = os.environ.get("TOUCHFILE_NATIVE")
            os.environ["TOUCHFILE_NATIVE"] = "0"  # read when a TouchFile is made
            try:
                self.tf = TouchFile(path)
            finally:
                if old is None:
                    del os.environ["TOUCHFILE_NATIVE"]
                else:
                    os.environ["TOUCHFILE_NATIVE"] = old
        if self.tf.native != native:
            raise RuntimeError(f"asked for native={native}, got a TouchFile with {self.tf.native}")

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        try:
            self.tf.acquire(touchfile.SHARED if shared else touchfile.EXCLUSIVE, timeout, cancel)
        except (LockTimeout, LockCancelled):
            return False
        return True

    def release(self) -> None:
        self.tf.release()

    def loop(self, n: int) -> None:
        _pairs(self.tf.acquire, self.tf.release, n)

    def canceller(self) -> tuple[Any, Callable[[], None]]:
        ctx = Context.with_cancel()
        return ctx, ctx.cancel

    def close(self) -> None:
        self.tf.close()


class _Alarm(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Alarm


class RawFlock:
    """The floor: a blocking fcntl.flock() on a descriptor of its own.

    A timeout is an interval timer whose handler raises, as util-linux
    flock(1) does for -w; that only works in the main thread.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if timeout is None:
            fcntl.flock(self.fd, op)
            return True
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the floor's timeout is a SIGALRM timer: main thread only")
        old = signal.signal(signal.SIGALRM, _on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 1e-6))
            fcntl.flock(self.fd, op)
            signal.setitimer(signal.ITIMER_REAL, 0)
            return True
        except _Alarm:
            # The timer may have fired just after the grant: never keep a lock we report lost.
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def loop(self, n: int) -> None:
        flock, fd, ex, un = fcntl.flock, self.fd, fcntl.LOCK_EX, fcntl.LOCK_UN
        for _ in range(n):
            flock(fd, ex)
            flock(fd, un)

    canceller = staticmethod(_no_cancel)

    def close(self) -> None:
        os.close(self.fd)


class FileLockLock:
    """filelock's FileLock: flock() with a sleep between tries.

    rw=True: its ReadWriteLock instead (an SQLite database), the one it
    offers for shared locks; FileLock has no shared mode.
    """

    def __init__(self, path: str, poll: float = 0.05, rw: bool = False) -> None:
        self.fl = filelock.FileLock(path, poll_interval=poll)
        self.rw = filelock.ReadWriteLock(path + ".db", is_singleton=False) if rw else None

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        t = -1 if timeout is None else timeout
        try:
            if self.rw is None:
                if shared:
                    raise ValueError("filelock's FileLock has no shared mode")
                self.fl.acquire(timeout=t, cancel_check=cancel)
            elif shared:
                self.rw.acquire_read(timeout=t)
            else:
                self.rw.acquire_write(timeout=t)
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        if self.rw is not None:
            self.rw.release()
        else:
            self.fl.release()

    def loop(self, n: int) -> None:
        _pairs(self.fl.acquire, self.fl.release, n)

    def canceller(self) -> tuple[Any, Callable[[], None]]:
        event = threading.Event()
        return event.is_set, event.set

    def close(self) -> None:
        if self.rw is not None:
            self.rw.close()


class PortalockerLock:
    """portalocker.Lock as documented: a timeout, non-blocking flock() tried every 0.25 s."""

    def __init__(self, path: str) -> None:
        import portalocker

        self.mod = portalocker
        self.path = path
        self.held: Any = None
        self.locks: dict[bool, Any] = {}

    def _lock(self, shared: bool) -> Any:
        if shared not in self.locks:
            kind = self.mod.LockFlags.SHARED if shared else self.mod.LockFlags.EXCLUSIVE
            flags = kind | self.mod.LockFlags.NON_BLOCKING
            self.locks[shared] = self.mod.Lock(self.path, mode="a", flags=flags)
        return self.locks[shared]

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        lock = self._lock(shared)
        try:
            lock.acquire(timeout=FOREVER if timeout is None else timeout)
        except self.mod.AlreadyLocked:
            return False
        self.held = lock
        return True

    def release(self) -> None:
        self.held.release()
        self.held = None

    def loop(self, n: int) -> None:
        lock = self._lock(False)
        _pairs(lock.acquire, lock.release, n)

    canceller = staticmethod(_no_cancel)

    def close(self) -> None:
        pass


class FastenersLock:
    """fasteners' InterProcessLock: lockf(), tries backing off from 10 to 100 ms.

    rw=True: its InterProcessReaderWriterLock (lockf() shared or exclusive).
    """

    def __init__(self, path: str, rw: bool = False) -> None:
        import fasteners

        self.lock = fasteners.InterProcessLock(path)
        self.rw = fasteners.InterProcessReaderWriterLock(path) if rw else None
        self.release_held: Callable[[], None] = self.lock.release

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        if self.rw is None:
            if shared:
                raise ValueError("fasteners' InterProcessLock has no shared mode")
            return bool(self.lock.acquire(timeout=timeout))
        if shared:
            self.release_held = self.rw.release_read_lock
            return bool(self.rw.acquire_read_lock(timeout=timeout))
        self.release_held = self.rw.release_write_lock
        return bool(self.rw.acquire_write_lock(timeout=timeout))

    def release(self) -> None:
        self.release_held()

    def loop(self, n: int) -> None:
        _pairs(self.lock.acquire, self.lock.release, n)

    canceller = staticmethod(_no_cancel)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    make: Callable[..., Lock]  # (path, rw=False); rw: the lock readers and writers share
    poll: float  # how long it may sleep between tries (0: it blocks in the kernel)
    deadline: bool = True  # a timeout for a waiter in any thread
    cancel: bool = False
    shared: bool = True  # takes part in the readers/writer figure
    module: str = ""  # the optional package it needs
    only: tuple[str, ...] = ()  # the figures it takes part in (every one if empty)

    def available(self) -> bool:
        if not self.module:
            return True
        try:
            __import__(self.module)
        except ImportError:
            return False
        return True


CONTENDERS = [
    Contender("native", "touchfile (native)", lambda p, rw=False: TouchFileLock(p), 0, cancel=True),
    Contender(
        "writers_first",
        "touchfile (prefer_writers)",
        lambda p, rw=False: TouchFileLock(p, prefer_writers=True),
        0,
        cancel=True,
        only=("readers_writer",),
    ),
    Contender(
        "polling",
        "touchfile (polling)",
        lambda p, rw=False: TouchFileLock(p, native=False),
        0.010,
        cancel=True,
    ),
    Contender(
        "floor", "floor: raw fcntl.flock", lambda p, rw=False: RawFlock(p), 0, deadline=False
    ),
    Contender(
        "filelock", "filelock", lambda p, rw=False: FileLockLock(p, rw=rw), 0.05, cancel=True
    ),
    Contender(
        "filelock_1ms",
        "filelock, 1 ms poll",
        lambda p, rw=False: FileLockLock(p, 0.001, rw),
        0.001,
        cancel=True,
        shared=False,
    ),
    Contender(
        "portalocker",
        "portalocker",
        lambda p, rw=False: PortalockerLock(p),
        0.25,
        module="portalocker",
    ),
    Contender(
        "fasteners", "fasteners", lambda p, rw=False: FastenersLock(p, rw), 0.1, module="fasteners"
    ),
]
BY_KEY = {c.key: c for c in CONTENDERS}


def lock_path(directory: str, key: str) -> str:
    """Each contender's own lock file."""
    return os.path.join(directory, f"{key}.lock")
