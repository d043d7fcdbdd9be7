"""flock() on a lock file: the local backend, waiting natively or by polling.

Each handle is one open file description of the lock file (flock() locks
belong to those), so the kernel alone decides who holds the lock: handles
of one process exclude each other exactly as processes do. method="fcntl"
takes the same locks with fcntl(F_OFD_SETLK), an open file description's
record lock (on the whole file, or a byte range for the command's --start
and --length): those exclude fcntl()/lockf() users, not flock() users. After every grant
the path is checked to still name the handle's file (dev, ino); when it does
not (the file was deleted or replaced), the handle is reopened on the file
the path names now and the lock is tried again.

FlockNative waits in a flock() that blocks in the kernel and that its
waiter's deadline or cancel() ends with a thread-targeted signal (see
_native/touchfile.c). FlockPolling, the fallback where that cannot be used,
retries flock(LOCK_NB) and sleeps on an Event that cancel() sets.

choose() is the one place that reads TOUCHFILE_NATIVE and TOUCHFILE_SIGNAL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import threading
import time
import warnings
from typing import Callable

from . import _log, _native
from ._context import Context
from ._errors import LockError
from ._holders import LockHolder, holders
from ._kinds import EXCLUSIVE, SHARED, LockType
from ._lockop import OFD as _OFD
from ._lockop import conflicts, lock_op
from ._native import Outcome
from ._open import open_lock_file

OK, BUSY, STALE, INTERRUPTED = Outcome.OK, Outcome.BUSY, Outcome.STALE, Outcome.INTERRUPTED
DEADLINE, NO_HANDLER = Outcome.DEADLINE, Outcome.NO_HANDLER

_EX, _SH, _UN, _NB, _flock = fcntl.LOCK_EX, fcntl.LOCK_SH, fcntl.LOCK_UN, fcntl.LOCK_NB, fcntl.flock

METHODS = ("flock", "fcntl")

# prefer_writers=True: the gate, one byte's open file description record lock
# (F_OFD_SETLK), which never conflicts with flock() locks. A writer that has
# to wait holds it exclusive (F_WRLCK, which needs the file open for writing)
# until it holds the lock; a reader passes it (F_RDLCK, at once when no
# writer waits) before it asks for its shared flock(). Far beyond any data
# the lock file may hold: a lock beyond the end of a file is allowed.
GATE = (2**62, 1)

# What an exclusive lock fails with through a read-only descriptor: fcntl()'s
# F_WRLCK always (EBADF), and flock(LOCK_EX) on NFS, whose client emulates
# flock() with byte-range locks (EBADF; EIO on older kernels).
_NEEDS_WRITE = (errno.EBADF, errno.EIO)

# Polling backs off from 1 ms to 10 ms: a released lock is seen 5 ms late on
# average once the wait is long, for about 100 wake-ups a second.
POLL_FIRST = 0.001
POLL_MAX = 0.010

_signal_chosen = False


def choose(
    path: str | None,
    mode: int,
    method: str = "flock",
    span: tuple[int, int] = (0, 0),
    fd: int | None = None,
    adopt: int | None = None,
    prefer_writers: bool = False,
) -> FlockPolling:
    """The flock backend for path (None: a new temporary lock file), as
    TOUCHFILE_NATIVE says: unset = native if built, "1" = native required,
    "0" = poll. Opens (creates) the lock file. method "fcntl": OFD locks on
    span, (start, length) (length 0: to the end). fd: lock that descriptor
    (inherited, say), not a path's file. adopt: a descriptor of path's file,
    opened as open() opens it, to be the first handle (the command's).
    prefer_writers: a writer that waits holds new readers back (GATE).

    Raises ValueError for a bad TOUCHFILE_NATIVE or TOUCHFILE_SIGNAL,
    RuntimeError when TOUCHFILE_NATIVE=1 and the core is not built, and
    OSError when the lock file cannot be opened.
    """
    global _signal_chosen
    setting = os.environ.get("TOUCHFILE_NATIVE", "")
    if setting not in ("", "0", "1"):
        raise ValueError(f"TOUCHFILE_NATIVE must be 0 or 1, not {setting!r}")
    if setting == "1" and not _native.AVAILABLE:
        raise RuntimeError("TOUCHFILE_NATIVE=1, but touchfile's native core is not built")
    if not _signal_chosen:
        # Once per process: the handler of the first wait stays the one.
        _native.use_signal(_native.parse_signal(os.environ.get("TOUCHFILE_SIGNAL", "SIGURG")))
        _signal_chosen = True
    if setting == "" and not _native.AVAILABLE:  # (TOUCHFILE_NATIVE=0 is a choice)
        _log.warn_once(
            "touchfile's native core is not built: lock waits poll, up to 10 ms late "
            "(install touchfile where a C compiler is available for waits in the kernel)"
        )
    cls = FlockNative if setting != "0" and _native.AVAILABLE else FlockPolling
    return cls(path, mode, method, span, fd, adopt, prefer_writers)


class FlockHandle:
    """One open file description of the lock file, and the file it was opened on."""

    __slots__ = ("__weakref__", "closed", "ctx", "dev", "fd", "ino", "since", "writable")

    lost = False  # a lock file's lock is never lost

    def __init__(self) -> None:
        self.ctx: Context | None = None  # the holder's held_context(), once asked for
        self.since = 0.0  # when the hold began, while the logger takes DEBUG
        self.fd = -1
        self.closed = True  # fd < 0 (a plain attribute: read on the hot path)
        self.dev = self.ino = 0
        self.writable = False

    def opened(self, fd: int, writable: bool) -> None:
        st = os.fstat(fd)
        self.fd, self.dev, self.ino, self.writable = fd, st.st_dev, st.st_ino, writable
        self.closed = False

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        self.closed = True
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # Never LOCK_UN here: after fork() the descriptor may be a copy of
        # one the parent still locks with; closing a copy leaves that alone.
        with contextlib.suppress(OSError):
            self.close()


def py_try_range(
    fd: int, op: int, start: int, length: int, path: bytes | None, dev: int, ino: int
) -> int:
    """_native.try_range() in Python: one non-blocking lock_op(), then check
    that path (if any) still names fd's file. The code of an Outcome, or -errno."""
    try:
        lock_op(fd, op | _NB, (start, length))
    except BlockingIOError:
        return BUSY
    except OSError as error:
        return -(error.errno or errno.EIO)
    if path is None:
        return OK
    try:
        st = os.stat(path)
        if st.st_dev == dev and st.st_ino == ino:
            return OK
    except OSError:
        pass  # gone, or unreadable: reopening the path reports why
    lock_op(fd, (op & _OFD) | _UN, (start, length))
    return STALE


def py_try_lock(fd: int, op: int, path: bytes | None, dev: int, ino: int) -> int:
    """_native.try_lock() in Python: py_try_range() on the whole file."""
    return py_try_range(fd, op, 0, 0, path, dev, ino)


class PollingWaiter:
    """A polling wait until deadline (time.monotonic(); math.inf for none)."""

    __slots__ = ("_event", "deadline", "reason")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reason: Outcome | None = None  # why the wait must end, once it must
        self._event: threading.Event | None = None  # what a poll sleeps on, from its first

    def cancel(self, reason: Outcome) -> None:
        if self.reason is None:
            self.reason = reason
        event = self._event  # (read after the reason is set: see block())
        if event is not None:
            event.set()

    def block(
        self, handle: FlockHandle, op: int, span: tuple[int, int], path: bytes | None
    ) -> Outcome:
        """Retry until the lock is not busy (OK, STALE) or the wait ends."""
        delay = POLL_FIRST
        start, length = span
        event = self._event
        if event is None:
            # Made before the reason is read: a cancel() that finds no event
            # set the reason before, and this loop sees it.
            event = self._event = threading.Event()
        while True:
            if self.reason is not None:
                return self.reason
            rc = py_try_range(handle.fd, op, start, length, path, handle.dev, handle.ino)
            rc = _native.outcome(rc, path)
            if rc is not BUSY:
                return rc
            left = self.deadline - time.monotonic()
            if left <= 0:
                return DEADLINE
            event.wait(min(delay, left))
            delay = min(delay * 2, POLL_MAX)


class FlockPolling:
    """flock() on the lock file at a path, waiting by polling."""

    __slots__ = (
        "_adopted", "_bpath", "_fd", "_method", "_mode", "_span", "_temporary", "_try", "name",
        "prefer_writers",
    )  # fmt: skip

    remote = False

    @property
    def native(self) -> bool:
        return False

    def __init__(
        self,
        path: str | None,
        mode: int,
        method: str = "flock",
        span: tuple[int, int] = (0, 0),
        fd: int | None = None,
        adopt: int | None = None,
        prefer_writers: bool = False,
    ) -> None:
        # _OFD for method "fcntl", added to every op.
        self._method = _OFD if method == "fcntl" else 0
        self._adopted = adopt  # the first handle's descriptor, if given
        self._span = span
        self._fd = fd
        # (dev, ino) of the private file of TouchFile(), never re-created:
        # under its old, visible name it would be anyone's to replace.
        self._temporary: tuple[int, int] | None = None
        self._bpath: bytes | None = None  # a descriptor: no path to check
        if fd is not None:
            self.name = str(fd)
        else:
            if path is None:
                path, self._temporary = _make_temporary()
            self.name = os.path.abspath(path)
            self._bpath = os.fsencode(self.name)
        self._mode = mode
        # One non-blocking flock(), then the path's check: the code of an
        # Outcome (OK, BUSY, STALE, INTERRUPTED) or -errno, for
        # _native.outcome(). An attribute, not a method: the hot path.
        self._try: Callable[[int, int, bytes | None, int, int], int] = self._try_function()
        self.prefer_writers = prefer_writers
        if prefer_writers:  # (so that the other locks' tries pay nothing for it)
            self._try = _behind_writers(self._try)

    def _try_function(self) -> Callable[[int, int, bytes | None, int, int], int]:
        return self._ranged(py_try_range) or py_try_lock

    def _ranged(
        self, try_range: Callable[[int, int, int, int, bytes | None, int, int], int]
    ) -> Callable[[int, int, bytes | None, int, int], int] | None:
        """try_range on this backend's span, or None for the whole file of a
        path (the plain try: every acquisition's path)."""
        if self._span == (0, 0) and self._bpath is not None:
            return None
        start, length = self._span
        return lambda fd, op, path, dev, ino: try_range(fd, op, start, length, path, dev, ino)

    # ---- handles --------------------------------------------------------------

    def open(self) -> FlockHandle:
        handle = FlockHandle()
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            handle.opened(adopted, _writable(adopted))
        else:
            self._reopen(handle, writable=False)
        return handle

    def _reopen(self, handle: FlockHandle, writable: bool) -> None:
        """(Re)open handle on the file the path names now."""
        handle.close()
        if self._fd is not None:  # the same open file description, ours to close
            fd = fcntl.fcntl(self._fd, fcntl.F_DUPFD_CLOEXEC, 0)
            handle.opened(fd, _writable(fd))
            return
        temporary = self._temporary
        if temporary is not None and _identity(self.name) != temporary:
            raise self._temporary_gone()  # before anything else can be said of it
        try:
            # Read-only unless writable, O_CLOEXEC (a program exec'd while we
            # hold the lock must not inherit it), never O_TRUNC, and never
            # someone else's file in a shared directory: see _open.
            fd = open_lock_file(self.name, self._mode, writable=writable, create=not temporary)
        except FileNotFoundError:
            if temporary is None:
                raise
            raise self._temporary_gone() from None
        handle.opened(fd, writable)
        if temporary is not None and (handle.dev, handle.ino) != temporary:
            handle.close()
            raise self._temporary_gone()

    def _temporary_gone(self) -> LockError:
        return LockError(
            f"the temporary lock file {self.name} was removed or replaced; "
            "it is never re-created (close this TouchFile and make another)",
            self.name,
        )

    def release(self, handle: FlockHandle) -> None:
        # Never unlink the lock file here: a waiter already blocked on this
        # inode would be granted a lock that guards nothing, while a newcomer
        # creates a new file at the path and locks that one too, and two
        # holders would be in at once.
        # Nor unlock a descriptor given as such: the lock is the caller's,
        # and a failed try of a conversion (shared to exclusive, FD's) gives
        # the handle back, which must leave the lock the caller held (F_OFD_SETLK
        # keeps it; flock() itself may drop it, as for flock(1)).
        if self._fd is None and not handle.closed:
            if self._method:
                self.unlock(handle)
            else:
                _flock(handle.fd, _UN)  # every release's path: no call more

    def unlock(self, handle: FlockHandle) -> None:
        """Unlock handle's description, whoever locked it."""
        lock_op(handle.fd, self._method | _UN, self._span)

    def close(self, handle: FlockHandle) -> None:
        handle.close()

    def forget_inherited(self) -> None:
        pass  # nothing beyond the handles, which Locks closed

    def discard(self) -> None:
        # Only our own file: one put in its place since is not ours to remove.
        if self._temporary is not None and _identity(self.name) == self._temporary:
            with contextlib.suppress(OSError):
                os.unlink(self.name)

    @property
    def picklable(self) -> bool:
        """True when a path and method say all there is to say of this lock."""
        return self._fd is None and self._span == (0, 0)

    def lock_id(self, handle: FlockHandle) -> object:
        return "file", self._method, self._span, handle.dev, handle.ino

    def holders(self) -> list[LockHolder]:
        path = self.name if self._fd is None else f"/proc/self/fd/{self._fd}"
        return holders(path, "OFDLCK" if self._method else "FLOCK")

    # ---- locking --------------------------------------------------------------

    def try_lock(self, handle: FlockHandle, kind: LockType, deadline: float) -> bool:
        op = (_EX if kind is EXCLUSIVE else _SH) | self._method
        rc = self._try(handle.fd, op, self._bpath, handle.dev, handle.ino)
        if rc == OK:
            return True  # every acquisition's path: nothing more to look at
        outcome = self._outcome(handle, op, rc)
        if outcome is STALE:  # the path names another file now: try that one, once
            self._reopen(handle, writable=False)  # read-write again as needed
            outcome = self._try_once(handle, op)
        return outcome is OK  # STALE again: replaced as we tried, as good as busy

    def _try_once(self, handle: FlockHandle, op: int) -> Outcome:
        """One try: OK, BUSY, STALE or INTERRUPTED (taken as BUSY by callers)."""
        return self._outcome(
            handle, op, self._try(handle.fd, op, self._bpath, handle.dev, handle.ino)
        )

    def _outcome(self, handle: FlockHandle, op: int, rc: int) -> Outcome:
        """A try's code as an Outcome. An error that says an exclusive lock
        needs a descriptor open for writing (NFS): as flock(1) does, reopen
        read-write and try again."""
        try:
            return _native.outcome(rc, self._bpath)
        except OSError as error:
            self._open_writable(handle, op, error)
        return self._try_once(handle, op)

    def _open_writable(self, handle: FlockHandle, op: int, error: OSError) -> None:
        """Reopen handle read-write if error says an exclusive lock needs it,
        and only where the caller may write the file anyway: the open itself,
        through the same walk, says so. Otherwise raise error."""
        given = self._fd is not None  # a descriptor given as such: never reopened
        if error.errno not in _NEEDS_WRITE or not op & _EX or handle.writable or given:
            raise error
        try:
            self._reopen(handle, writable=True)
        except OSError as refused:
            if self._method:  # F_WRLCK needs a descriptor open for writing, anywhere
                raise self._needs_write(refused, "an exclusive lock with method='fcntl'") from None
            if isinstance(refused, PermissionError) or refused.errno == errno.EROFS:
                raise error from None
            raise

    def waiter(self, deadline: float) -> PollingWaiter:
        return PollingWaiter(deadline)

    def wait(self, handle: FlockHandle, kind: LockType, waiter: PollingWaiter) -> Outcome:
        op = (_EX if kind is EXCLUSIVE else _SH) | self._method
        if not self.prefer_writers:
            return self._wait(handle, op, waiter)
        # The gate is given back in a finally, whatever ends the wait (an
        # exception may land just after the kernel granted it): a pooled
        # handle must not keep it. Giving back one not held does nothing.
        if kind is SHARED:  # behind any writer that waits: through the gate first
            try:
                outcome = self._gate(handle, _OFD | _SH, waiter)
            finally:
                _open_gate(handle)
            return outcome if outcome is not OK else self._wait(handle, op, waiter)
        if not handle.writable:
            self._open_for_gate(handle)
        try:
            outcome = self._gate(handle, _OFD | _EX, waiter)  # after the writers before
            if outcome is not OK:
                return outcome
            return self._wait(handle, op, waiter)  # no new reader comes in meanwhile
        finally:
            _open_gate(handle)

    def _gate(self, handle: FlockHandle, op: int, waiter: PollingWaiter) -> Outcome:
        """Wait for the gate (op: _OFD with _SH or _EX), as a lock is waited
        for: OK once it is held, or the reason the wait ended."""
        while True:
            outcome = waiter.block(handle, op, GATE, None)
            if outcome is not INTERRUPTED:  # (a signal not ours: as in _wait())
                return outcome

    def _open_for_gate(self, handle: FlockHandle) -> None:
        """A writer's handle, read-write for the gate's F_WRLCK."""
        try:
            self._reopen(handle, writable=True)
        except OSError as refused:
            what = "with prefer_writers=True, an exclusive lock that has to wait"
            raise self._needs_write(refused, what, "the lock file") from None

    def _needs_write(self, refused: OSError, what: str, file: str = "the file") -> OSError:
        """The reopen read-write that what needs was refused: say so."""
        reason = f"{what} needs {file} open for writing: {refused.strerror}"
        return OSError(refused.errno, reason, self.name)

    def _wait(self, handle: FlockHandle, op: int, waiter: PollingWaiter) -> Outcome:
        reopened = False
        rc = BUSY
        while True:
            if rc is BUSY or rc is INTERRUPTED:
                # INTERRUPTED: a signal not ours. This loop's next bytecode
                # runs Python's handler; if it raised nothing, wait on.
                rc = self._block(handle, op, waiter)
            elif rc is STALE:  # granted on a file the path no longer names
                if waiter.reason is not None:
                    return waiter.reason
                if reopened and waiter.deadline <= time.monotonic():
                    return DEADLINE  # replaced again and again: not for ever
                # Even past the deadline, once: a try is not a wait, and the
                # file the path names now may well be free.
                reopened = True
                self._reopen(handle, writable=False)  # read-write again as needed
                rc = self._try_once(handle, op)
            else:
                return rc  # OK, or the reason the wait ended

    def _block(self, handle: FlockHandle, op: int, waiter: PollingWaiter) -> Outcome:
        try:
            return waiter.block(handle, op, self._span, self._bpath)
        except OSError as error:
            self._open_writable(handle, op, error)
        return BUSY  # wait again, read-write


class NativeWaiter(PollingWaiter):
    """A wait blocked in the kernel, ended by the native interrupt; it polls
    instead once the interrupt signal turns out to be someone else's."""

    __slots__ = ("_native",)

    def __init__(self, deadline: float) -> None:
        super().__init__(deadline)
        self._native: _native.Waiter | None = _native.Waiter(deadline)

    def cancel(self, reason: Outcome) -> None:
        super().cancel(reason)  # (no event to set until a fall back polls)
        waiter = self._native
        if waiter is not None:
            waiter.cancel(reason)

    def block(
        self, handle: FlockHandle, op: int, span: tuple[int, int], path: bytes | None
    ) -> Outcome:
        waiter = self._native
        if waiter is not None:
            rc = waiter.wait(handle.fd, op, span, path, handle.dev, handle.ino)
            if rc is not NO_HANDLER:
                return rc
            _warn_no_handler()
            self._native = None
        return super().block(handle, op, span, path)


class FlockNative(FlockPolling):
    """flock() on the lock file at a path, waiting in the kernel."""

    __slots__ = ()

    @property
    def native(self) -> bool:
        return _native.handler_ready()

    def _try_function(self) -> Callable[[int, int, bytes | None, int, int], int]:
        return self._ranged(_native.try_range) or _native.try_lock

    def waiter(self, deadline: float) -> NativeWaiter:
        return NativeWaiter(deadline)


def _open_gate(handle: FlockHandle) -> None:
    """Give back handle's hold of the gate, if any (none if the handle was
    closed or reopened meanwhile: the gate went with its old description)."""
    if not handle.closed:
        lock_op(handle.fd, _OFD | _UN, GATE)


def _behind_writers(
    try_lock: Callable[[int, int, bytes | None, int, int], int],
) -> Callable[[int, int, bytes | None, int, int], int]:
    """try_lock for prefer_writers=True: a shared lock is busy while a writer
    waits (holds the gate), even if no writer holds the lock yet."""

    def gated(fd: int, op: int, path: bytes | None, dev: int, ino: int) -> int:
        if op & _SH and conflicts(fd, _SH, GATE):
            return BUSY
        return try_lock(fd, op, path, dev, ino)

    return gated


def _writable(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _make_temporary() -> tuple[str, tuple[int, int]]:
    """A new private lock file: its path, and its (dev, ino)."""
    import tempfile  # only TouchFile() needs it: the command starts without

    try:
        fd, path = tempfile.mkstemp(prefix="touchfile-", suffix=".lock")
    except FileNotFoundError as error:
        # tempfile's first search for a directory reports any failure,
        # EMFILE included, as "No usable temporary directory found".
        try:
            os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as cause:
            raise OSError(
                cause.errno, f"cannot create a temporary lock file: {cause.strerror}"
            ) from error
        raise
    st = os.fstat(fd)
    os.close(fd)  # read-write: reopened read-only, as every lock file is
    return path, (st.st_dev, st.st_ino)


_warned = False


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
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """The stacklevel of the first frame outside touchfile (the caller's
    acquire(), whatever the path to here), for warnings filters by module."""
    level, frame = 2, sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        f"{__package__}."
    ):
        level, frame = level + 1, frame.f_back
    return level


def _signal_name() -> str:
    try:
        return signal.Signals(_native.SIGNAL).name
    except ValueError:
        return f"SIGRTMIN+{_native.SIGNAL - signal.SIGRTMIN}"
