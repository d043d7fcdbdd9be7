"""The seam between the one acquisition path and the engines that lock.

A backend owns one lockable resource (a lock file for flock(), a key for
PostgreSQL's advisory locks) and the handles through which it is locked:
each handle can hold one lock at a time.
The acquisition path (_acquire.py) knows nothing of how: it asks a backend
for a handle, tries once, waits, and turns the outcome into an exception.

Outcomes are _native.Outcome values, whichever the backend: a wait ends OK,
or with the reason its waiter was given (DEADLINE, CANCELLED, CLOSED).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from ._context import Context
    from ._kinds import LockType
    from ._native import Outcome


class Handle(Protocol):
    # The holder's held_context(), once asked for: cancelled when the hold ends.
    ctx: Context | None
    # When the hold began (time.monotonic()), set while the "touchfile" logger
    # takes DEBUG records, for the release's; 0.0 otherwise.
    since: float

    @property
    def closed(self) -> bool:
        """True once closed (it can then never be locked again)."""
        ...

    @property
    def lost(self) -> bool:
        """True once the lock held through it is known lost (never for a file)."""
        ...


class Waiter(Protocol):
    def cancel(self, reason: Outcome) -> None:
        """End the wait with reason, now or when it starts; safe from any
        thread and more than once (the first reason wins)."""
        ...


H = TypeVar("H", bound=Handle)
W = TypeVar("W", bound=Waiter)


class Backend(Protocol[H, W]):
    """One lockable resource, and the steps of taking and giving back its lock."""

    name: str  # what is locked, as errors name it (a path, a postgresql:// URL)
    # True when each step is a round trip over a network (PostgreSQL):
    # asyncio then takes every step in a thread, never on the event loop.
    remote: bool

    @property
    def native(self) -> bool:
        """True when waits block where the lock is kept (the kernel), False
        when they poll."""
        ...

    def open(self) -> H:
        """A new handle on the resource. Raises OSError or LockError."""
        ...

    def try_lock(self, handle: H, kind: LockType, deadline: float) -> bool:
        """One try that never waits for the lock: True when handle now holds
        it, False when it is busy. A try that is a round trip gives up (as
        busy) when the other side is still silent a while after deadline,
        the acquisition's. Raises OSError or LockError."""
        ...

    def waiter(self, deadline: float) -> W:
        """A waiter for one wait that ends by itself at deadline (absolute,
        time.monotonic(); math.inf for none), or when cancelled."""
        ...

    def wait(self, handle: H, kind: LockType, waiter: W) -> Outcome:
        """Block until handle holds the lock (OK) or waiter ends the wait
        (the reason it was given). Raises OSError or LockError."""
        ...

    def release(self, handle: H) -> None:
        """Give back the lock that handle holds (nothing if it holds none).
        Raises LockLost if the hold had been lost (and the handle is closed)."""
        ...

    def close(self, handle: H) -> None:
        """Close handle without touching a lock another process shares
        through it (after fork(), say)."""
        ...

    def lock_id(self, handle: H) -> object:
        """What handle locks, as this process can tell: handles with equal ids
        exclude each other, whatever object or backend opened them (the same
        file, method and range; the same server and key)."""
        ...

    def holders(self) -> list[Any]:
        """Who holds a lock on the resource now (a NamedTuple per holder,
        with at least pid, kind and command)."""
        ...

    def forget_inherited(self) -> None:
        """In a forked child, once every handle is closed: reset what the
        parent's threads may have left in use."""
        ...

    def discard(self) -> None:
        """Done with the resource: every handle is closed (a temporary lock
        file is removed)."""
        ...
