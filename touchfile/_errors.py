"""The exceptions users catch. All of them pickle, so they cross processes."""

from __future__ import annotations

from typing import Any

from ._kinds import LockType


class LockError(Exception):
    """A lock could not be taken or given back: misuse, or a closed TouchFile."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path))


class _WaitEnded(LockError):
    _what = ""

    def __init__(self, path: str, kind: LockType, waited: float) -> None:
        self.kind = kind
        self.waited = waited
        # kind._value_: .value is a Python-level property, and this is every
        # timed-out or cancelled wait's path.
        super().__init__(
            f"{self._what} after {waited:.3f} s waiting for {kind._value_} lock on {path}", path
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.kind, self.waited))


class LockTimeout(_WaitEnded, TimeoutError):
    """The deadline (a timeout, or a context's deadline) passed before the lock was free."""

    _what = "timed out"


class LockLost(LockError):
    """The lock was lost while held: its PostgreSQL session ended (a server
    restart, pg_terminate_backend(), a broken network), and the server may
    have granted it to someone else since. release() raises it."""


class LockCancelled(_WaitEnded):
    """The context of the wait was cancelled before the lock was free."""

    _what = "cancelled"
