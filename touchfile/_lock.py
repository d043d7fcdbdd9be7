"""TouchFile: shared and exclusive flock() locks on a lock file.

Each holding thread locks through its own open file description (flock()
locks belong to those), so the kernel alone decides who holds the lock:
threads of one process exclude each other exactly as processes do.
Descriptors are kept open between acquisitions, in a small pool, and every
acquisition checks that the path still names the descriptor's file.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import math
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from . import _native
from ._context import Context, check_timeout
from ._errors import LockCancelled, LockError, LockTimeout
from ._native import BUSY, CANCELLED, CLOSED, DEADLINE, INTERRUPTED, OK, STALE
from ._open import open_lock_file
from ._wait import Wait, py_try_lock

if TYPE_CHECKING:
    from ._holders import LockHolder

T = TypeVar("T")

# What flock(LOCK_EX) returns on NFS through a read-only descriptor.
_NEEDS_WRITE = (-errno.EBADF, -errno.EIO)

_get_ident = threading.get_ident
_monotonic = time.monotonic


class LockType(enum.Enum):
    """The kind of a lock: many SHARED holders at once, or one EXCLUSIVE holder."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive"


SHARED = LockType.SHARED
EXCLUSIVE = LockType.EXCLUSIVE


def _op_of(kind: object) -> int:
    """The flock() operation for a kind (a LockType, or "shared"/"exclusive")."""
    if kind is EXCLUSIVE:
        return fcntl.LOCK_EX
    if kind is SHARED:
        return fcntl.LOCK_SH
    if isinstance(kind, str):
        try:
            return _op_of(LockType(kind))
        except ValueError:
            raise ValueError(f"kind must be 'shared' or 'exclusive', not {kind!r}") from None
    raise TypeError(f"kind must be a LockType (SHARED or EXCLUSIVE), not {kind!r}")


def _use_native() -> bool:
    """TOUCHFILE_NATIVE: unset = native if built, "1" = native required, "0" = poll."""
    setting = os.environ.get("TOUCHFILE_NATIVE", "")
    if setting == "0":
        return False
    if setting == "1" and not _native.AVAILABLE:
        raise RuntimeError("TOUCHFILE_NATIVE=1, but touchfile's native core is not built")
    if setting not in ("", "1"):
        raise ValueError(f"TOUCHFILE_NATIVE must be 0 or 1, not {setting!r}")
    return _native.AVAILABLE


class _Handle:
    """One open file description of the lock file (what flock() locks belong to)."""

    __slots__ = ("__weakref__", "dev", "fd", "ino", "writable")

    def __init__(self) -> None:
        self.fd = -1
        self.writable = False

    def open(self, path: str, mode: int, *, create: bool, writable: bool) -> None:
        # Read-only unless writable, O_CLOEXEC, never O_TRUNC, and never
        # someone else's file in a shared directory: see _open.
        fd = open_lock_file(path, mode, writable=writable, create=create)
        st = os.fstat(fd)
        self.fd, self.dev, self.ino, self.writable = fd, st.st_dev, st.st_ino, writable

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # Never LOCK_UN here: after fork() the descriptor may be a copy of
        # one the parent still locks with; closing a copy leaves that alone.
        with contextlib.suppress(OSError):
            self.close()


_instances: weakref.WeakSet[TouchFile] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for tf in list(_instances):
        tf._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


class TouchFile:
    """A lock file offering shared and exclusive locks with deadlines and cancellation.

    ``TouchFile(path)`` opens (creating if missing, never truncating) the lock
    file at path; ``TouchFile()`` makes a fresh temporary one that close()
    removes. Locks are owned by the thread that takes them.
    """

    __slots__ = (
        "__weakref__",
        "_async",
        "_bpath",
        "_closed",
        "_handles",
        "_held",
        "_idle",
        "_mode",
        "_mutex",
        "_native",
        "_temporary",
        "_try",
        "_waits",
        "path",
    )  # fmt: skip

    def __init__(self, path: str | os.PathLike[str] | None = None, *, mode: int = 0o644) -> None:
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"mode must be an int such as 0o644, not {mode!r}")
        self._native = _use_native()
        # (dev, ino) of the private file of TouchFile(), never re-created.
        self._temporary: tuple[int, int] | None = None
        if path is None:
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
            os.close(fd)  # read-write: reopened read-only below, as every lock file is
            self._temporary = (st.st_dev, st.st_ino)
        self.path: str = os.path.abspath(os.fspath(path))
        self._bpath = os.fsencode(self.path)
        self._mode = mode
        self._try = _native.try_lock if self._native and _native.try_lock else py_try_lock
        self._mutex = threading.Lock()  # guards _waits, and close() against itself
        self._closed = False
        # owner -> its locked handle; the owner is the thread's ident, or the
        # asyncio task for locks taken by tasks (once _async is set).
        self._held: dict[object, _Handle] = {}
        self._async = False
        self._waits: set[Wait] = set()
        self._handles: weakref.WeakSet[_Handle] = weakref.WeakSet()  # all, for fork
        try:
            self._idle: list[_Handle] = [self._new_handle()]  # opens (creates) the file now
        except BaseException:
            self._remove_temporary()  # made by mkstemp(), perhaps through a planted TMPDIR
            raise
        _instances.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"held by {len(self._held)} thread(s)"
        return f"<TouchFile {self.path!r} {state}>"

    @property
    def native(self) -> bool:
        """True when this object's waits block in the kernel and are ended by
        the native interrupt; False when they poll (see the README)."""
        return self._native and _native.handler_ready()

    # ---- acquire / release -------------------------------------------------

    def acquire(
        self,
        kind: LockType | str = EXCLUSIVE,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> None:
        """Take the lock, waiting until ``timeout`` seconds pass or ``ctx`` ends.

        timeout=None (or math.inf) waits for ever; timeout=0 tries once.
        Raises LockTimeout, LockCancelled, or LockError (held already by
        this thread, or closed).
        """
        op = _op_of(kind)
        start: float | None = None
        if timeout is None and ctx is None:
            deadline = math.inf
        else:
            start = _monotonic()  # one reading: for the deadline, and the errors' waited
            deadline = self._deadline(kind, timeout, ctx, start)
        me = self._owner() if self._async else _get_ident()
        if self._closed or me in self._held:
            raise self._misuse(me)
        try:
            handle: _Handle | None = self._idle.pop()
        except IndexError:
            handle = None
        try:
            if handle is None:
                handle = self._new_handle()
            rc = self._try(handle.fd, op, self._bpath, handle.dev, handle.ino)
            if rc != OK:
                self._wait(handle, op, kind, deadline, ctx, rc, start)
        except BaseException:
            if handle is not None:
                # An exception (KeyboardInterrupt, say) may land after the
                # kernel granted the lock: never pool a locked handle.
                if handle.fd >= 0:
                    handle.unlock()
                self._put_back(handle)
            raise
        # The hot path takes no mutex: each step is one atomic dict or list
        # operation, and close() sets _closed before it empties _held, so
        # either close() sees this entry or we see _closed (and whoever pops
        # the entry first unlocks it).
        self._held[me] = handle
        if self._closed:
            raise self._closed_while_taking(me, handle)

    def release(self) -> None:
        """Give back the lock this thread holds; LockError if it holds none."""
        handle = self._held.pop(self._owner() if self._async else _get_ident(), None)
        if handle is None:
            why = " (close() released it)" if self._closed else ""
            raise LockError(f"this thread holds no lock on {self.path}{why}", self.path)
        # Never unlink the lock file here (nor in close()): a waiter already
        # blocked on this inode would be granted a lock that guards nothing,
        # while a newcomer creates a new file at the path and locks that one
        # too, and two holders would be in at once.
        fcntl.flock(handle.fd, fcntl.LOCK_UN)
        self._put_back(handle)

    def holders(self) -> list[LockHolder]:
        """The processes holding a lock on this file right now (Linux only).

        Each is a LockHolder(pid, kind, command); see the README for how
        they are found. Raises NotImplementedError where /proc/locks is
        missing.
        """
        from ._holders import holders

        return holders(self.path)

    def _fileno(self) -> int:
        """The descriptor through which this thread holds its lock."""
        handle = self._held.get(self._owner())
        if handle is None:
            raise LockError(f"this thread holds no lock on {self.path}", self.path)
        return handle.fd

    def locked(self) -> bool:
        """True when the calling thread (or asyncio task) holds a lock through this object."""
        return self._owner() in self._held

    def _owner(self) -> object:
        """Who takes and gives back locks here: the current asyncio task, if
        this object has served tasks and one is running, else the thread."""
        if self._async:
            from asyncio import _get_running_loop, current_task

            loop = _get_running_loop()
            task = current_task(loop) if loop is not None else None
            if task is not None:
                return task
        return _get_ident()

    def _deadline(self, kind: object, timeout: object, ctx: Context | None, now: float) -> float:
        """The wait's absolute deadline, for a call made at ``now``."""
        deadline = math.inf
        seconds = check_timeout(timeout)
        if seconds != math.inf:
            deadline = now + seconds
        if ctx is not None:
            if not isinstance(ctx, Context):
                raise TypeError(f"ctx must be a Context or None, not {ctx!r}")
            # A context that is done fails at once, even when the lock is free.
            if ctx.cancelled:
                raise LockCancelled(self.path, _kind(kind), 0.0)
            if ctx.deadline <= now:
                raise LockTimeout(self.path, _kind(kind), 0.0)
            deadline = min(deadline, ctx.deadline)
        return deadline

    def _wait(
        self,
        handle: _Handle,
        op: int,
        kind: object,
        deadline: float,
        ctx: Context | None,
        rc: int,
        start: float | None = None,
    ) -> None:
        """Go on from a failed try (rc) until handle holds the lock, or raise.

        start: when the wait began (time.monotonic()), for the errors' waited.
        """
        if start is None:
            start = _monotonic()
        wait: Wait | None = None
        reopened = False
        try:
            while rc != OK:
                if rc == STALE:  # the path names another file now: lock that one
                    if self._closed:
                        rc = CLOSED  # and never recreate a closed temporary file
                    elif wait is not None and wait.reason:
                        rc = wait.reason
                    elif self._temporary is not None:
                        raise self._temporary_gone()
                    elif reopened and deadline <= _monotonic():
                        rc = DEADLINE  # replaced again and again: not for ever
                    else:
                        # Even past the deadline, once: a try is not a wait, and
                        # the file at the path may well be free.
                        reopened = True
                        self._open(handle, writable=False)  # again as needed
                        rc = self._try(handle.fd, op, self._bpath, handle.dev, handle.ino)
                    continue
                if rc in _NEEDS_WRITE and op == fcntl.LOCK_EX and not handle.writable:
                    # NFS emulates flock() with byte-range locks, and a write
                    # lock needs a descriptor open for writing (EBADF; EIO on
                    # older kernels). As flock(1) does, reopen read-write, but
                    # only where the caller may write the file anyway: the
                    # open itself says so, through the same walk (_open).
                    self._open_writable(handle, rc)
                    rc = self._try(handle.fd, op, self._bpath, handle.dev, handle.ino)
                    continue
                if rc in (BUSY, INTERRUPTED):
                    if wait is None:
                        if deadline <= _monotonic():
                            rc = DEADLINE
                            continue
                        wait = self._start_wait(deadline, ctx)
                    # On INTERRUPTED (a signal not ours), the loop's next
                    # bytecode runs Python's handler; if it raised nothing,
                    # the wait goes on.
                    rc = wait.run(handle.fd, op, self._bpath, handle.dev, handle.ino)
                    continue
                waited = _monotonic() - start
                if rc == DEADLINE:
                    raise LockTimeout(self.path, _kind(kind), waited)
                if rc == CANCELLED:
                    raise LockCancelled(self.path, _kind(kind), waited)
                if rc == CLOSED:
                    raise LockError(f"{self.path} was closed while waiting for its lock", self.path)
                raise OSError(-rc, os.strerror(-rc), self.path)
        finally:
            if wait is not None:
                self._end_wait(wait, ctx)

    def _start_wait(self, deadline: float, ctx: Context | None) -> Wait:
        wait = Wait(deadline, self._native)
        with self._mutex:
            if self._closed:
                wait.cancel(CLOSED)
            self._waits.add(wait)
        if ctx is not None and not ctx._attach(wait):
            wait.cancel(CANCELLED)
        return wait

    def _end_wait(self, wait: Wait, ctx: Context | None) -> None:
        if ctx is not None:
            ctx._detach(wait)
        with self._mutex:
            self._waits.discard(wait)

    def _new_handle(self) -> _Handle:
        handle = _Handle()
        self._open(handle, writable=False)
        self._handles.add(handle)
        return handle

    def _open(self, handle: _Handle, writable: bool) -> None:
        """(Re)open handle on the file the path names now."""
        handle.close()
        temporary = self._temporary
        try:
            handle.open(self.path, self._mode, create=temporary is None, writable=writable)
        except FileNotFoundError:
            if temporary is None:
                raise
            raise self._temporary_gone() from None
        if temporary is not None and (handle.dev, handle.ino) != temporary:
            handle.close()
            raise self._temporary_gone()

    def _temporary_gone(self) -> LockError:
        # Never re-created: under its old, visible name it would be anyone's
        # to replace, and it would outlive close() if made again elsewhere.
        return LockError(
            f"the temporary lock file {self.path} was removed or replaced; "
            "it is never re-created (close this TouchFile and make another)",
            self.path,
        )

    def _open_writable(self, handle: _Handle, rc: int) -> None:
        """Reopen handle read-write; if that is not allowed, the error is rc's."""
        try:
            self._open(handle, writable=True)
        except OSError as error:
            if not isinstance(error, PermissionError) and error.errno != errno.EROFS:
                raise
            raise OSError(-rc, os.strerror(-rc), self.path) from None

    def _put_back(self, handle: _Handle) -> None:
        """An unlocked handle returns to the pool (closed instead, once we are)."""
        if handle.fd >= 0:
            self._idle.append(handle)
        if self._closed:  # close() may have drained the pool before our append
            self._close_idle()

    def _close_idle(self) -> None:
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return

    def _closed_while_taking(self, me: object, handle: _Handle) -> LockError:
        """close() came as me took the lock through handle: undo, and say so."""
        if self._held.pop(me, None) is handle:
            handle.unlock()
            handle.close()
        return LockError(f"{self.path} was closed while the lock was being taken", self.path)

    def _misuse(self, me: object) -> LockError:
        if self._closed:
            return LockError(f"{self.path} is closed", self.path)
        return LockError(
            f"this thread (or task) already holds a lock on {self.path}; release it first "
            "(flock() cannot convert a lock atomically)",
            self.path,
        )

    # ---- conveniences ------------------------------------------------------

    def lock(
        self,
        kind: LockType | str = EXCLUSIVE,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> _Guard:
        """``with tf.lock(SHARED, timeout=5): ...`` holds the lock inside the block."""
        _op_of(kind)
        return _Guard(self, kind, timeout, ctx)

    def shared_lock(self, timeout: float | None = None, ctx: Context | None = None) -> _Guard:
        """``with tf.shared_lock(timeout=5): ...``"""
        return _Guard(self, SHARED, timeout, ctx)

    def exclusive_lock(self, timeout: float | None = None, ctx: Context | None = None) -> _Guard:
        """``with tf.exclusive_lock(timeout=5): ...``"""
        return _Guard(self, EXCLUSIVE, timeout, ctx)

    def with_lock(
        self,
        fn: Callable[[], T],
        kind: LockType | str = EXCLUSIVE,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> T:
        """Run fn() holding the lock and return its result; always releases.

        fn never runs without the lock: if the lock cannot be taken, the
        error is raised and fn is not called.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {fn!r}")
        self.acquire(kind, timeout, ctx)
        try:
            return fn()
        finally:
            self.release()

    # ---- asyncio -----------------------------------------------------------

    async def acquire_async(
        self,
        kind: LockType | str = EXCLUSIVE,
        *,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> None:
        """acquire() for asyncio tasks: the event loop never blocks, and
        cancelling the task ends the wait at once. The lock belongs to the
        task; give it back with release() from that task."""
        from ._async import acquire

        await acquire(self, kind, timeout, ctx)

    def lock_async(
        self,
        kind: LockType | str = EXCLUSIVE,
        *,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> _AsyncGuard:
        """``async with tf.lock_async(SHARED, timeout=5): ...``"""
        _op_of(kind)
        return _AsyncGuard(self, kind, timeout, ctx)

    async def with_lock_async(
        self,
        fn: Callable[[], Awaitable[T]],
        kind: LockType | str = EXCLUSIVE,
        *,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> T:
        """Await fn() holding the lock and return its result; always releases."""
        if not callable(fn):
            raise TypeError(f"fn must be an async callable, not {fn!r}")
        await self.acquire_async(kind, timeout=timeout, ctx=ctx)
        try:
            return await fn()
        finally:
            self.release()

    # ---- closing -----------------------------------------------------------

    def close(self) -> None:
        """Release every lock held through this object and close its descriptors.

        Waits on this object in other threads end at once with LockError; a
        thread whose lock close() released gets LockError from release().
        A temporary lock file (``TouchFile()``) is removed. Safe to call twice.
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            waits = list(self._waits)
        for wait in waits:
            wait.cancel(CLOSED)
        while True:
            try:
                _, handle = self._held.popitem()
            except KeyError:
                break
            handle.unlock()
            handle.close()
        self._close_idle()
        self._remove_temporary()

    def _remove_temporary(self) -> None:
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                # Only our own file: a file put in its place since is not ours to remove.
                st = os.stat(self.path, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == self._temporary:
                    os.unlink(self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TouchFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _forget_inherited(self) -> None:
        """In a forked child: the parent's locks are not ours; drop every copy.

        Closing a copied descriptor never releases the parent's lock (that
        needs LOCK_UN, or the last copy to close), so the child can neither
        release nor break what the parent holds.
        """
        self._mutex = threading.Lock()  # may have been held by another thread
        self._held = {}
        self._idle = []
        self._waits = set()
        # Every handle, including those that threads of the parent were
        # using: a copy left open here would keep the parent's lock alive.
        for handle in list(self._handles):
            handle.close()


def _kind(kind: object) -> LockType:
    return kind if isinstance(kind, LockType) else LockType(kind)


class _Guard:
    """What tf.lock() returns: acquires on enter, releases on exit."""

    __slots__ = ("_ctx", "_kind", "_tf", "_timeout")

    def __init__(
        self, tf: TouchFile, kind: LockType | str, timeout: float | None, ctx: Context | None
    ) -> None:
        self._tf, self._kind, self._timeout, self._ctx = tf, kind, timeout, ctx

    def __enter__(self) -> TouchFile:
        self._tf.acquire(self._kind, self._timeout, self._ctx)
        return self._tf

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tf.release()


class _AsyncGuard(_Guard):
    """What tf.lock_async() returns: acquires on enter, releases on exit."""

    __slots__ = ()

    async def __aenter__(self) -> TouchFile:
        await self._tf.acquire_async(self._kind, timeout=self._timeout, ctx=self._ctx)
        return self._tf

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tf.release()
