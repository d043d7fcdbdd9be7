"""The one acquisition path: normalize the request, take a handle, try, wait,
commit, or raise. The sync API, the asyncio API and the command all use it,
over any backend (_backend.py); it knows nothing of flock().

begin() does everything a lock that is free needs, with no allocation beyond
the backend's; only a busy lock makes a Request, whose wait() blocks (in the
caller's thread, or in a thread of _async's) and whose hold() makes the
caller the holder. ended() is the one place where an outcome becomes an
exception.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Any

from . import _log
from ._backend import Backend, Waiter
from ._context import Context, check_timeout
from ._errors import LockCancelled, LockError, LockLost, LockTimeout
from ._kinds import EXCLUSIVE, SHARED, LockType, parse_kind
from ._native import Outcome

_monotonic = time.monotonic
_INF = math.inf
_DEBUG = _log.DEBUG


class Locks:
    """The locks taken through one TouchFile: who holds what, and the idle
    handles kept open between acquisitions.

    Invariants. held maps each owner (a thread's ident, or an asyncio task)
    to the one handle through which it holds its lock; idle holds handles
    that hold no lock; a handle in neither is being used by an acquisition
    in progress, which puts it in one of them or closes it. closed only goes
    from False to True. The hot path (begin, Request.hold, and TouchFile.release,
    which does put_back() itself) takes no mutex: each step is one
    atomic dict or list operation (atomic under the GIL, and per object in
    free-threaded builds), and close() sets closed before it empties held, so
    either close() sees a new entry or whoever added it sees closed; whoever
    pops an entry first releases it.
    """

    __slots__ = (
        "__weakref__", "backend", "closed", "handles", "held", "idle", "mutex", "released",
        "waits",
    )  # fmt: skip

    def __init__(self, backend: Backend[Any, Any]) -> None:
        self.backend = backend
        self.closed = False
        self.held: dict[object, Any] = {}
        self.handles: weakref.WeakSet[Any] = weakref.WeakSet()  # every one, for fork
        self.idle: list[Any] = [self.open()]  # opens (creates) the resource now
        self.mutex = threading.Lock()  # guards adding to waits, and close() against itself
        self.waits: set[Waiter] = set()  # waits in progress, for close() to end
        self.released: set[object] = set()  # the owners whose holds close() ended
        instances.add(self)
        _log.logger()  # found now, if logging has been imported since the last one

    def open(self) -> Any:
        handle = self.backend.open()
        self.handles.add(handle)
        return handle

    def misuse(self, owner: object) -> LockError:
        name = self.backend.name
        if self.closed:
            return LockError(f"{name} is closed", name)
        return LockError(
            f"this thread (or task) already holds a lock on {name}; release it first "
            "(a lock cannot be converted atomically)",
            name,
        )

    def put_back(self, handle: Any) -> None:
        """release()'s work once the holder's entry is popped: the hold ends,
        the lock is given back (LockLost if it had been lost), and the handle
        goes back to the pool. (TouchFile.release() does this inline.)"""
        if handle.ctx is not None:
            end_hold(handle)
        self.backend.release(handle)
        if handle.since:
            log_release(self, handle)
        if not handle.closed:  # a lost hold's handle is closed
            self.idle.append(handle)
        if self.closed:  # close() may have drained the pool before our append
            self.close_idle()

    def give_back(self, handle: Any) -> None:
        """A handle that may hold a lock (an acquisition that failed or was
        abandoned) goes back to the pool, unlocked: an exception may land
        after the lock was granted, and a pooled handle must hold nothing."""
        if handle.closed:
            end_hold(handle)
        else:
            self.let_go(handle)
            if not handle.closed:  # release() may find the connection lost
                self.idle.append(handle)
        if self.closed:  # close() may have drained the pool before our append
            self.close_idle()

    def let_go(self, handle: Any) -> None:
        """End a hold nobody will be told of: LockLost is nobody's to hear."""
        handle.since = 0.0  # no release record for it
        end_hold(handle)
        try:  # noqa: SIM105 (not contextlib.suppress: every failed wait comes here)
            self.backend.release(handle)
        except LockLost:
            pass

    def closed_while_taking(self, owner: object, handle: Any) -> LockError:
        """close() came as owner took the lock through handle: undo, and say so."""
        if self.held.pop(owner, None) is handle:
            self.let_go(handle)
            self.backend.close(handle)
        name = self.backend.name
        return LockError(f"{name} was closed while the lock was being taken", name)

    def not_held(self, owner: object) -> LockError:
        name = self.backend.name
        why = ""
        if owner in self.released:
            why = " (close() released it)"
        elif self.closed:
            why = " (it is closed)"
        return LockError(f"this thread holds no lock on {name}{why}", name)

    def close(self) -> None:
        with self.mutex:
            if self.closed:
                return
            self.closed = True
            waits = list(self.waits)
        for wait in waits:
            wait.cancel(Outcome.CLOSED)
        while True:
            try:
                owner, handle = self.held.popitem()
            except KeyError:
                break
            self.released.add(owner)
            self.let_go(handle)  # its holder learns of a loss from release()
            self.backend.close(handle)
        self.close_idle()
        self.backend.discard()

    def close_idle(self) -> None:
        while True:
            try:
                self.backend.close(self.idle.pop())
            except IndexError:
                return

    def forget_inherited(self) -> None:
        """In a forked child: the parent's locks are not ours; close every
        handle, including those that threads of the parent were using (a copy
        left open would keep the parent's lock alive). Closing a copy never
        releases the parent's lock (that needs an unlock, or the last copy to
        close), so the child can neither release nor break what it holds."""
        self.mutex = threading.Lock()  # may have been held by another thread
        for handle in self.held.values():
            end_hold(handle)  # the child holds nothing
        self.held = {}
        self.idle = []
        self.waits = set()
        self.released = set()
        for handle in list(self.handles):
            self.backend.close(handle)
        self.backend.forget_inherited()


instances: weakref.WeakSet[Locks] = weakref.WeakSet()


def end_hold(handle: Any) -> None:
    """The hold through handle is over: its held_context() ends."""
    ctx = handle.ctx
    if ctx is not None:
        handle.ctx = None
        ctx.cancel()


def held_context(locks: Locks, owner: object) -> Context:
    """The Context that ends when owner's hold ends (released, or lost)."""
    handle = locks.held.get(owner)
    if handle is None:
        raise locks.not_held(owner)
    ctx: Context | None = handle.ctx
    if ctx is None:
        ctx = handle.ctx = Context.with_cancel()
        # After the store: a hold lost meanwhile was either seen here, or
        # its ctx by whoever marked it lost.
        if handle.lost:
            ctx.cancel()
    return ctx


def begin(
    locks: Locks,
    kind: object,
    timeout: object,
    ctx: Context | None,
    owner: object,
    commit: bool = True,
) -> Request | None:
    """Take the lock for owner if it is free: then None, and owner holds it.
    If it is busy, the Request that waits for it. With commit=False, a lock
    that is free gives a Request too, already granted: its hold() makes
    owner the holder (for a caller in another thread than owner's).

    Raises TypeError or ValueError (a bad kind, timeout or ctx), LockError
    (misuse, closed), LockTimeout or LockCancelled (a ctx that is done, or
    timeout=0 on a busy lock), OSError or LockError from the backend.
    """
    if kind is not EXCLUSIVE and kind is not SHARED:
        kind = parse_kind(kind)
    start = deadline = _INF
    if timeout is not None or ctx is not None:
        start = _monotonic()  # one reading: the deadline's, and the errors' waited
        deadline = _deadline(locks.backend.name, kind, timeout, ctx, start)
    if locks.closed or owner in locks.held:
        raise locks.misuse(owner)
    try:
        handle = locks.idle.pop()
    except IndexError:
        handle = None
    try:
        if handle is None:
            handle = locks.open()
        if not locks.backend.try_lock(handle, kind, deadline):
            if deadline == _INF and ctx is None:  # a wait nothing else could end
                _check_self_deadlock(locks, owner, handle)
            if start == _INF:
                start = _monotonic()
            if deadline <= start or deadline <= _monotonic():
                raise ended(Outcome.DEADLINE, locks.backend.name, kind, _monotonic() - start)
            return Request(locks, handle, kind, deadline, ctx, owner, start)
        cached = _log.cached
        if cached is not None and cached(_DEBUG) is not False and _log.debugging():
            handle.since = _monotonic()  # for release()'s DEBUG record
    except BaseException:
        if handle is not None:
            locks.give_back(handle)
        raise
    if not commit:
        return Request(locks, handle, kind, deadline, ctx, owner, start, granted=True)
    locks.held[owner] = handle  # as Request.hold(): no call since the try
    if locks.closed:
        raise locks.closed_while_taking(owner, handle)
    return None


def snapshot() -> list[Locks]:
    """Every live Locks now (a copy: others are made and collected meanwhile)."""
    while True:
        try:
            return list(instances)
        except RuntimeError:  # the set changed size as it was copied: again
            continue


def _check_self_deadlock(locks: Locks, owner: object, handle: Any) -> None:
    """The lock is busy, and the wait would have no deadline and no context:
    raise LockError if owner holds it already through another object (a
    second TouchFile of the same file), as the wait would then never end. (A
    wait with a deadline or a context ends by itself, or by another thread's
    cancel: a test of exclusion, say.)"""
    mine: object = None
    for other in snapshot():
        held = other.held.get(owner) if other is not locks else None
        if held is None or held.lost:  # (a lost hold no longer holds the lock)
            continue
        if mine is None:
            mine = locks.backend.lock_id(handle)
        if other.backend.lock_id(held) == mine:
            name = locks.backend.name
            raise LockError(
                f"this thread (or task) already holds a lock on {name} through another "
                "object: waiting for this one would wait for ever, on itself (release "
                "that one first, or take both through one object)",
                name,
            )


def _deadline(name: str, kind: LockType, timeout: object, ctx: object, now: float) -> float:
    """The wait's absolute deadline, for a call made at now."""
    deadline = math.inf
    seconds = check_timeout(timeout)
    if seconds != math.inf:
        deadline = now + seconds
    if ctx is not None:
        if not isinstance(ctx, Context):
            raise TypeError(f"ctx must be a Context or None, not {ctx!r}")
        # A context that is done fails at once, even when the lock is free.
        if ctx.cancelled:
            raise ended(Outcome.CANCELLED, name, kind, 0.0)
        if ctx.deadline <= now:
            raise ended(Outcome.DEADLINE, name, kind, 0.0)
        deadline = min(deadline, ctx.deadline)
    return deadline


class Request:
    """A busy lock's acquisition in progress: the normalized request, and the
    handle it holds on to until hold() or abandon()."""

    __slots__ = ("ctx", "deadline", "granted", "handle", "kind", "locks", "owner", "start")

    def __init__(
        self,
        locks: Locks,
        handle: Any,
        kind: LockType,
        deadline: float,
        ctx: Context | None,
        owner: object,
        start: float,
        granted: bool = False,
    ) -> None:
        self.locks = locks
        self.handle = handle
        self.kind = kind
        self.deadline = deadline  # absolute, time.monotonic(); math.inf for none
        self.ctx = ctx
        self.owner = owner
        self.start = start  # when the call began, for the errors' waited
        self.granted = granted  # the handle holds the lock: wait() returns at once

    def finish(self) -> None:
        """wait(), then hold: the sync API's end of an acquisition."""
        try:
            self.wait(self.ctx)
            self.hold()
        except BaseException:
            self.abandon()
            raise
        self.check_closed()

    def wait(self, ctx: Context | None) -> None:
        """Block until the handle holds the lock, the deadline passes, ctx
        (the request's own, or one derived from it) is cancelled or the
        TouchFile is closed. Raises as begin() does."""
        if self.granted:
            return
        locks, backend = self.locks, self.locks.backend
        held_by = None
        if _log.debugging():  # (not over a network: a round trip nothing could end)
            held_by = "see holders()" if backend.remote else _held_by(backend)
        waiter = backend.waiter(self.deadline)
        with locks.mutex:
            if locks.closed:
                waiter.cancel(Outcome.CLOSED)
            locks.waits.add(waiter)
        try:
            if ctx is not None and not ctx._attach(waiter):
                waiter.cancel(Outcome.CANCELLED)
            outcome = backend.wait(self.handle, self.kind, waiter)
        finally:
            if ctx is not None:
                ctx._detach(waiter)
            # No mutex: one atomic discard, and close() cancels a copy of the
            # set (a wait that has ended by then ignores its cancel).
            locks.waits.discard(waiter)
        if held_by is not None:
            _log.logger().debug(
                "waited %.3f s for %s lock on %s (held by %s): %s", _monotonic() - self.start,
                self.kind.value, backend.name, held_by, _OUTCOME_WORDS.get(outcome, outcome.name),
            )  # fmt: skip
        if outcome is not Outcome.OK:
            raise ended(outcome, backend.name, self.kind, _monotonic() - self.start)

    def hold(self) -> None:
        """The owner holds the lock now. Called inside the try whose except
        abandons, once the wait returned: an exception (KeyboardInterrupt, a
        stop signal's) may land at any call, and one that lands between the
        grant and this store must find the handle in no one's hands, to give
        it back unlocked. So this is the one call, and the store is its last
        statement: nothing can land inside it after the entry."""
        cached = _log.cached  # as in begin(): no call while logging is off
        if cached is not None and cached(_DEBUG) is not False and _log.debugging():
            self.handle.since = _monotonic()  # for release()'s DEBUG record
        self.locks.held[self.owner] = self.handle

    def check_closed(self) -> None:
        """After hold(): undo it, and say so, if close() came meanwhile."""
        locks = self.locks
        if locks.closed:
            raise locks.closed_while_taking(self.owner, self.handle)

    def abandon(self) -> None:
        """Nobody will take this lock: give the handle back (unlocked), and
        forget it was held if hold() ran."""
        # Only an entry with this handle is ours: close() may have popped it
        # first, and a task whose wait was cancelled may have taken the lock
        # again, through another handle, by the time its old wait gives back.
        held = self.locks.held
        if held.get(self.owner) is self.handle:
            held.pop(self.owner, None)
        self.locks.give_back(self.handle)


_OUTCOME_WORDS = {
    Outcome.OK: "granted", Outcome.DEADLINE: "timed out", Outcome.CANCELLED: "cancelled",
    Outcome.CLOSED: "closed",
}  # fmt: skip


def _held_by(backend: Backend[Any, Any]) -> str:
    """Who holds the lock, for a wait's DEBUG record."""
    try:
        found = backend.holders()
    except Exception as e:  # /proc unreadable, or the server gone: the wait goes on
        return f"unknown: {e}"
    if not found:
        return "no process this one can see"
    return ", ".join(f"pid {h.pid} ({h.kind.value}, {h.command})" for h in found)


def log_release(locks: Locks, handle: Any) -> None:
    """The DEBUG record of a release: how long the lock was held."""
    since, handle.since = handle.since, 0.0
    log = _log.logger()
    if log is not None:
        log.debug("released lock on %s, held %.3f s", locks.backend.name, _monotonic() - since)


def ended(outcome: Outcome, name: str, kind: LockType, waited: float) -> LockError:
    """The exception for a wait that ended without the lock."""
    if outcome is Outcome.DEADLINE:
        return LockTimeout(name, kind, waited)
    if outcome is Outcome.CANCELLED:
        return LockCancelled(name, kind, waited)
    if outcome is Outcome.CLOSED:
        return LockError(f"{name} was closed while waiting for its lock", name)
    raise AssertionError(f"a wait cannot end with {outcome!r}")  # a bug in a backend
