"""Deadlines and cancellation: Go's context.Context, for lock waits.

A Context has an absolute deadline on time.monotonic()'s clock (math.inf for
none) and can be cancelled from any thread. A child's deadline is the earlier
of its own and its parent's, and cancelling a parent cancels its children.
Waits attach themselves while they block, so cancel() ends them at once.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Protocol

from ._native import Outcome

# Guards the tree: cancel flags, children and attached waits. Held briefly,
# never while calling out.
_tree = threading.Lock()


def reset_after_fork() -> None:
    # A thread of the parent may have held it at fork(); that thread does not
    # exist in the child, so the copy would stay locked for ever.
    global _tree
    _tree = threading.Lock()


class _Cancellable(Protocol):
    def cancel(self, reason: Outcome) -> None: ...


def check_timeout(timeout: object) -> float:
    """A timeout in seconds, validated: math.inf for none."""
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout != timeout or timeout < 0:  # NaN, negative
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    try:
        return float(timeout)
    except OverflowError:  # an int beyond float's range: longer than any wait
        return math.inf


def deadline_of(timeout: object) -> float:
    """The absolute deadline for a relative timeout, starting now."""
    seconds = check_timeout(timeout)
    return math.inf if seconds == math.inf else time.monotonic() + seconds


class Context:
    """A deadline and/or a cancel, shared by any number of waits in any threads.

    Use the constructors: ``Context.with_timeout(2.0)``,
    ``Context.with_deadline(time.monotonic() + 2)``, ``Context.with_cancel()``;
    each takes ``parent=``.
    """

    __slots__ = ("__weakref__", "_cancelled", "_children", "_deadline", "_waits")

    def __init__(self, deadline: float = math.inf, *, parent: Context | None = None) -> None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be a number (time.monotonic() clock), not {deadline!r}")
        if deadline != deadline:
            raise ValueError("deadline must not be NaN")
        if parent is not None and not isinstance(parent, Context):
            raise TypeError(f"parent must be a Context or None, not {parent!r}")
        try:
            self._deadline = float(deadline)
        except OverflowError:  # an int beyond float's range
            self._deadline = math.inf if deadline > 0 else -math.inf
        self._cancelled = False
        self._children: weakref.WeakSet[Context] | None = None  # made for the first child
        self._waits: set[_Cancellable] = set()
        if parent is not None:
            self._deadline = min(self._deadline, parent._deadline)
            with _tree:
                if parent._cancelled:
                    self._cancelled = True
                else:
                    if parent._children is None:
                        parent._children = weakref.WeakSet()
                    parent._children.add(self)

    @classmethod
    def with_timeout(cls, timeout: float, *, parent: Context | None = None) -> Context:
        """A context whose deadline is ``timeout`` seconds from now."""
        return cls(deadline_of(timeout), parent=parent)

    @classmethod
    def with_deadline(cls, deadline: float, *, parent: Context | None = None) -> Context:
        """A context that ends at ``deadline``, a time.monotonic() value."""
        return cls(deadline, parent=parent)

    @classmethod
    def with_cancel(cls, *, parent: Context | None = None) -> Context:
        """A context that ends when cancel() is called (or its parent ends)."""
        return cls(parent=parent)

    @property
    def deadline(self) -> float:
        """The absolute deadline on time.monotonic()'s clock; math.inf for none."""
        return self._deadline

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called on this context or an ancestor."""
        return self._cancelled

    def remaining(self) -> float:
        """Seconds until the deadline (<= 0 once passed, 0 once cancelled;
        math.inf for none)."""
        if self._cancelled:
            return 0.0
        return self._deadline - time.monotonic()

    def cancel(self) -> None:
        """Cancel this context and its descendants, ending their waits now.

        Safe to call from any thread, and more than once.
        """
        waits: list[_Cancellable] = []
        with _tree:
            todo = [self]
            while todo:
                ctx = todo.pop()
                if ctx._cancelled:
                    continue
                ctx._cancelled = True
                waits.extend(ctx._waits)
                ctx._waits.clear()
                if ctx._children is not None:
                    todo.extend(ctx._children)
        for wait in waits:
            wait.cancel(Outcome.CANCELLED)

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else f"remaining={self.remaining():.3f}s"
        return f"<Context {state}>"

    def _attach(self, wait: _Cancellable) -> bool:
        """Let cancel() reach wait; False if this context is cancelled already."""
        with _tree:
            if self._cancelled:
                return False
            self._waits.add(wait)
            return True

    def _detach(self, wait: _Cancellable) -> None:
        with _tree:
            self._waits.discard(wait)
