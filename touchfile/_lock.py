"""TouchFile: shared and exclusive locks on a lock file, with deadlines and
cancellation. The public face: what each call means lives here (LockBase,
which PostgresLock shares); how a lock is taken lives in _acquire.py, and
how a lock file is locked in _flock.py.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import (
    _flock,
    _fork,  # noqa: F401  (resets the child after fork(), once locks exist)
)
from ._acquire import Locks, begin, end_hold, held_context, log_release
from ._backend import Backend
from ._context import Context
from ._errors import LockError, LockLost
from ._kinds import EXCLUSIVE, SHARED, LockType, parse_kind

if TYPE_CHECKING:
    from ._holders import LockHolder

T = TypeVar("T")
L = TypeVar("L", bound="LockBase")
F = TypeVar("F", bound=Callable[..., Any])

_get_ident = threading.get_ident
_exiting = False  # the interpreter is exiting: objects still alive are not leaks
_exit_registered = False


def _exit() -> None:
    global _exiting
    _exiting = True


def _collected(locks: Locks, what: str, pid: int) -> None:
    """A lock object collected without close(): close it, and warn of the leak
    as an unclosed file does. One alive as the interpreter exits is no leak:
    only a TouchFile()'s file is removed, and the process's end closes the
    rest, which keeps a lock that a child shares (the command's background
    child, flock(1)'s way). Nothing in a forked child: what it has are the
    parent's."""
    if locks.closed or os.getpid() != pid:
        return
    if _exiting:
        locks.backend.discard()
        return
    if locks.backend.remote:
        # Round trips, and the watcher's mutex, which the collecting thread
        # may hold (a collection runs wherever an allocation triggers it).
        threading.Thread(target=locks.close, name="touchfile-close", daemon=True).start()
    else:
        locks.close()
    warnings.warn(f"unclosed {what} {locks.backend.name!r}", ResourceWarning, stacklevel=1)


class LockBase:
    """The lock API over one backend: TouchFile's, and PostgresLock's.

    Locks are owned by the thread (or async task) that takes them.
    """

    __slots__ = ("__weakref__", "_async", "_finalizer", "_locks")

    _locks: Locks

    def _start(self, backend: Backend[Any, Any], watched: bool = True) -> None:
        """Begin with backend. watched: closed, with a ResourceWarning, if
        collected unclosed (the command's lock is not: it is left to the
        processes that share its descriptor)."""
        # True once a task has taken a lock here: owners may be tasks.
        self._async = False
        try:
            self._locks = Locks(backend)  # opens the resource (creates the lock file)
        except BaseException:
            backend.discard()  # TouchFile()'s file, made through a planted TMPDIR, say
            raise
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if not watched:
            return
        self._finalizer = weakref.finalize(
            self, _collected, self._locks, type(self).__name__, os.getpid()
        )
        global _exit_registered
        if not _exit_registered:
            # After weakref.finalize's own exit function (registered by the
            # first finalize made), so that this one runs before it.
            atexit.register(_exit)
            _exit_registered = True

    @property
    def native(self) -> bool:
        """True when this object's waits block where the lock is kept (the
        kernel, the server) and end at once on a deadline or cancel; False
        when they poll (see the README)."""
        return self._locks.backend.native

    # ---- acquire / release -------------------------------------------------

    def acquire(
        self,
        kind: LockType | str = EXCLUSIVE,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> None:
        """Take the lock, waiting until ``timeout`` seconds pass or ``ctx`` ends.

        timeout=None (or math.inf) waits for ever; timeout=0 tries once.
        Raises LockTimeout, LockCancelled, LockError (held already by this
        thread, or closed), TypeError or ValueError (a bad argument), or
        OSError (the lock file cannot be opened again).
        """
        owner = self._owner() if self._async else _get_ident()
        request = begin(self._locks, kind, timeout, ctx, owner)
        if request is not None:
            request.finish()

    def release(self) -> None:
        """Give back the lock this thread holds. Raises LockError if it holds
        none, and LockLost if its hold had been lost (a PostgresLock's)."""
        # Locks.put_back(), inline: one call less on every release.
        locks = self._locks
        owner = self._owner() if self._async else _get_ident()
        handle = locks.held.pop(owner, None)
        if handle is None:
            raise locks.not_held(owner)
        if handle.ctx is not None:
            end_hold(handle)
        locks.backend.release(handle)  # LockLost, if the hold had been lost
        if handle.since:
            log_release(locks, handle)
        if not handle.closed:
            locks.idle.append(handle)
        if locks.closed:  # close() may have drained the pool before our append
            locks.close_idle()

    def held_context(self) -> Context:
        """A Context that ends when this thread's (or task's) hold ends:
        cancelled when the lock is released, or lost (a PostgresLock's
        session ended). Pass it to the waits of the work done under the lock,
        or check its .cancelled. Raises LockError if no lock is held."""
        return held_context(self._locks, self._owner())

    def locked(self) -> bool:
        """True when the calling thread (or async task) holds a lock through this object."""
        return self._owner() in self._locks.held

    def _owner(self) -> object:
        """Who takes and gives back locks here: the current async task
        (asyncio's or trio's), if this object has served tasks and one is
        running, else the thread."""
        if self._async:
            from ._async import current_task

            task = current_task()
            if task is not None:
                return task
        return _get_ident()

    # ---- conveniences ------------------------------------------------------

    def lock(
        self: L,
        kind: LockType | str = EXCLUSIVE,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> _Guard[L]:
        """``with tf.lock(SHARED, timeout=5): ...`` holds the lock inside the block."""
        parse_kind(kind)
        return _Guard(self, kind, timeout, ctx)

    def shared_lock(self: L, timeout: float | None = None, ctx: Context | None = None) -> _Guard[L]:
        """``with tf.shared_lock(timeout=5): ...``"""
        return _Guard(self, SHARED, timeout, ctx)

    def exclusive_lock(
        self: L, timeout: float | None = None, ctx: Context | None = None
    ) -> _Guard[L]:
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
        if getattr(getattr(fn, "__code__", None), "co_flags", 0) & _ASYNC:
            raise _not_sync(fn)
        self.acquire(kind, timeout, ctx)
        try:
            result = fn()
        except BaseException:
            with contextlib.suppress(LockLost):  # fn's own exception goes on
                self.release()
            raise
        self.release()
        if hasattr(result, "__await__") and _is_coroutine(result):  # it would run later
            cast(Any, result).close()  # (else "never awaited" too): this says why
            raise _not_sync(fn)
        return result

    # ---- async: asyncio, trio, and anyio on either -----------------------

    async def acquire_async(
        self,
        kind: LockType | str = EXCLUSIVE,
        *,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> None:
        """acquire() for async tasks (asyncio, uvloop, trio, anyio): the event
        loop never blocks, and cancelling the task (or its cancel scope) ends
        the wait at once. The lock belongs to the task; give it back with
        release() from that task."""
        from ._async import acquire

        await acquire(self, kind, timeout, ctx)

    def lock_async(
        self: L,
        kind: LockType | str = EXCLUSIVE,
        *,
        timeout: float | None = None,
        ctx: Context | None = None,
    ) -> _AsyncGuard[L]:
        """``async with tf.lock_async(SHARED, timeout=5): ...``"""
        parse_kind(kind)
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
            awaitable = fn()
            if not hasattr(awaitable, "__await__"):
                raise TypeError(
                    f"with_lock_async() awaits fn(), but {fn!r} returned {awaitable!r}, "
                    "which cannot be awaited (for a plain function, use with_lock())"
                )
            result = await awaitable
        except BaseException:
            with contextlib.suppress(LockLost):
                await self._release_async()
            raise
        await self._release_async()
        return result

    async def _release_async(self) -> None:
        """release(), off the event loop where it is a round trip to a server."""
        if self._locks.backend.remote:
            from ._async import release

            await release(self)
        else:
            self.release()

    # ---- closing -----------------------------------------------------------

    def close(self) -> None:
        """Release every lock held through this object and close its
        descriptors (a PostgresLock's connections).

        Waits on this object in other threads end at once with LockError; a
        thread whose lock close() released gets LockError from release().
        A temporary lock file (``TouchFile()``) is removed. Safe to call twice.
        """
        self._locks.close()
        if self._finalizer is not None:
            self._finalizer.detach()  # nothing left to do when collected

    @property
    def closed(self) -> bool:
        return self._locks.closed

    def __enter__(self: L) -> L:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TouchFile(LockBase):
    """A lock file offering shared and exclusive locks with deadlines and cancellation.

    ``TouchFile(path)`` opens (creating if missing, never truncating) the lock
    file at path; ``TouchFile()`` makes a fresh temporary one that close()
    removes. Locks are owned by the thread (or async task) that takes them.
    """

    __slots__ = ("_method", "_mode", "path")

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        mode: int = 0o644,
        method: str = "flock",
        prefer_writers: bool = False,
    ) -> None:
        """method: "flock" (flock() locks) or "fcntl" (fcntl() open file
        description locks, F_OFD_SETLK, on the whole file). prefer_writers:
        an exclusive lock that has to wait holds back new shared ones (those
        asked for by TouchFiles with prefer_writers=True) until it gets in;
        "flock" only. Raises TypeError (a bad path, mode, method or
        prefer_writers), ValueError (an unknown method, or "fcntl" with
        prefer_writers),
        FileNotFoundError (an empty path, a missing directory),
        PermissionError (see the README's Security), other OSErrors from
        opening the file, and ValueError or RuntimeError for a bad
        TOUCHFILE_NATIVE or TOUCHFILE_SIGNAL."""
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"mode must be an int such as 0o644, not {mode!r}")
        if not isinstance(method, str):
            raise TypeError(f"method must be 'flock' or 'fcntl', not {method!r}")
        if method not in _flock.METHODS:
            raise ValueError(f"unknown method {method!r}: use 'flock' or 'fcntl'")
        if not isinstance(prefer_writers, bool):
            raise TypeError(f"prefer_writers must be True or False, not {prefer_writers!r}")
        if prefer_writers and method != "flock":
            raise ValueError("prefer_writers=True works with method='flock' only")
        if path is not None:
            path = os.fsdecode(path)
            if not path:  # os.path.abspath("") would be the current directory
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        self._mode, self._method = mode, method
        self._begin(_flock.choose(path, mode, method, prefer_writers=prefer_writers))

    @classmethod
    def _for_command(
        cls,
        path: str | None,
        fd: int | None,
        method: str,
        span: tuple[int, int],
        adopt: int | None = None,
    ) -> TouchFile:
        """The command's lock: on the file at path (created 0666 less the
        umask, as flock(1) does), or on the open file description of fd,
        which is then the path; with method "fcntl", on the bytes of span
        (start, length; length 0: to the end). adopt: a descriptor of path's
        file, opened as the backend opens it (and perhaps locked already),
        to be the first handle. Raises OSError."""
        if path == "":  # os.path.abspath("") would be the current directory
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        tf = cls.__new__(cls)
        tf._mode, tf._method = 0o666, method
        tf._begin(_flock.choose(path, 0o666, method, span, fd, adopt), watched=False)
        return tf

    def _unlock(self) -> int:
        """The command's -u: give back the lock held through the command's
        description, whoever took it (FD's; on a lock file, one nobody has
        locked); returns its descriptor, which stays open for the command."""
        backend = self._locks.backend
        assert isinstance(backend, _flock.FlockPolling)
        handle = self._locks.idle[0]  # the first, which nothing has used
        backend.unlock(handle)
        fd: int = handle.fd
        return fd

    def _begin(self, backend: _flock.FlockPolling, watched: bool = True) -> None:
        self.path: str = backend.name
        self._start(backend, watched)

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy (pickle, multiprocessing) is the path and options: it holds
        nothing, and opens descriptors of its own in the process that loads it.
        The copy of a TouchFile() opens its temporary file by path, and never
        removes it: the original's close() does."""
        backend = self._locks.backend
        if type(self) is not TouchFile or not isinstance(backend, _flock.FlockPolling):
            raise TypeError(f"a subclass of TouchFile pickles by its own __reduce__: {self!r}")
        if not backend.picklable:  # the command's: a descriptor, or a byte range
            raise TypeError(f"this TouchFile cannot be pickled: {self!r}")
        return (_reopen, (self.path, self._mode, self._method, backend.prefer_writers))

    def __repr__(self) -> str:
        locks = self._locks
        state = "closed" if locks.closed else f"held by {len(locks.held)} thread(s)"
        return f"<TouchFile {self.path!r} {state}>"

    def holders(self) -> list[LockHolder]:
        """The processes holding a lock on this file right now (Linux only).

        Each is a LockHolder(pid, kind, command); see the README for how
        they are found. Raises NotImplementedError where /proc/locks is
        missing, and OSError if the file cannot be stat()ed.
        """
        return self._locks.backend.holders()

    def _fileno(self) -> int:
        """The descriptor through which this thread holds its lock."""
        handle = self._locks.held.get(self._owner())
        if handle is None:
            raise LockError(f"this thread holds no lock on {self.path}", self.path)
        fd: int = handle.fd
        return fd


def _reopen(path: str, mode: int, method: str, prefer_writers: bool = False) -> TouchFile:
    """A pickled TouchFile, loaded: a new one on the same path and options."""
    return TouchFile(path, mode=mode, method=method, prefer_writers=prefer_writers)


# Code flags of an async def function, and of an async generator's.
_ASYNC = 0x80 | 0x200  # inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _is_coroutine(result: Any) -> bool:
    """A coroutine object, whose code has not run yet (unlike a Future, say)."""
    import inspect

    return inspect.iscoroutine(result)


def _not_sync(fn: object) -> TypeError:
    return TypeError(
        f"with_lock() runs fn() under the lock, but {fn!r} is asynchronous: its work "
        "would run later, outside the lock; use await tf.with_lock_async(fn)"
    )


class _Guard(Generic[L]):
    """What tf.lock() returns: acquires on enter, releases on exit; or, as a
    decorator, runs each call of the function under the lock."""

    __slots__ = ("_ctx", "_kind", "_tf", "_timeout")

    def __init__(
        self, tf: L, kind: LockType | str, timeout: float | None, ctx: Context | None
    ) -> None:
        self._tf, self._kind, self._timeout, self._ctx = tf, kind, timeout, ctx

    def __enter__(self) -> L:
        self._tf.acquire(self._kind, self._timeout, self._ctx)
        return self._tf

    def __call__(self, fn: F) -> F:
        """@tf.lock(timeout=5) on a function: each call takes the lock (a new
        timeout each time, the same ctx), runs fn, and releases, as
        with_lock(); an async def function does so through the async path."""
        import functools
        import inspect

        if isinstance(fn, (staticmethod, classmethod)):
            raise TypeError(
                f"put @lock() below @{type(fn).__name__}, on the function itself: {fn!r}"
            )
        if not callable(fn):
            raise TypeError(f"@lock() decorates a function, not {fn!r}")
        tf, kind, timeout, ctx = self._tf, self._kind, self._timeout, self._ctx
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                call = functools.partial(fn, *args, **kwargs)
                return await tf.with_lock_async(call, kind, timeout=timeout, ctx=ctx)

            return cast(F, run_async)
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"cannot hold a lock around {fn!r}, a generator: its body runs as it is "
                "iterated, after the call has returned (and released the lock)"
            )

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            return tf.with_lock(functools.partial(fn, *args, **kwargs), kind, timeout, ctx)

        return cast(F, run)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._tf.release()
            return
        with contextlib.suppress(LockLost):  # the block's own exception goes on
            self._tf.release()


class _AsyncGuard(_Guard[L]):
    """What tf.lock_async() returns: acquires on enter, releases on exit."""

    __slots__ = ()

    async def __aenter__(self) -> L:
        await self._tf.acquire_async(self._kind, timeout=self._timeout, ctx=self._ctx)
        return self._tf

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self._tf._release_async()
            return
        with contextlib.suppress(LockLost):
            await self._tf._release_async()
