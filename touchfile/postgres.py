"""Locks shared by many machines: PostgreSQL advisory locks, with TouchFile's API.

Example::

    from touchfile.postgres import PostgresLock

    with PostgresLock("nightly-report", dsn="postgresql://locks@db1/app") as lk:
        with lk.lock(timeout=5):
            ...  # one holder at a time, on every host that uses this database

psycopg 3.2 or later is needed: ``pip install 'touchfile[postgres]'``.
"""

from __future__ import annotations

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "touchfile.postgres needs psycopg 3: pip install 'touchfile[postgres]'"
    ) from None

if tuple(int(part) for part in psycopg.__version__.split(".")[:2]) < (3, 2):
    raise ImportError(
        f"touchfile.postgres needs psycopg 3.2 or later (for cancel_safe()), not "
        f"{psycopg.__version__}: pip install 'touchfile[postgres]'"
    )

from ._lock import LockBase
from ._postgres import PostgresBackend, PostgresHolder

__all__ = ["PostgresHolder", "PostgresLock"]


class PostgresLock(LockBase):
    """A PostgreSQL advisory lock, shared or exclusive, with deadlines and cancellation.

    ``PostgresLock(name, dsn=...)``: name is a str, hashed by the server to
    the lock's 64-bit key as ``hashtextextended(name, 0)``, or an int, the
    key itself. dsn is a libpq connection string or postgresql:// URL (None:
    libpq's PG* environment variables). The first connection is made here.
    Locks are owned by the thread (or asyncio task) that takes them, each
    through a session of its own; the connections are kept for reuse until
    close().
    """

    __slots__ = ("_backend", "name")

    def __init__(self, name: str | int, dsn: str | None = None) -> None:
        """Raises TypeError or ValueError (a bad name or DSN), ConnectionError
        (the server cannot be reached), PermissionError (it refused us), or
        LockError (it failed a statement: hashtextextended() needs
        PostgreSQL 11 or later)."""
        self._backend = PostgresBackend(name, dsn)
        self.name = name
        self._start(self._backend)

    @property
    def key(self) -> int:
        """The 64-bit key the server locks (the name's hash, or the int given)."""
        key = self._backend.key
        assert key is not None  # set when the first connection was made
        return int(key)

    @property
    def url(self) -> str:
        """Where the lock is, as errors and the touchfile command name it:
        ``postgresql://user@host:port/db#name`` (no password)."""
        return self._backend.name

    def __repr__(self) -> str:
        locks = self._locks
        state = "closed" if locks.closed else f"held by {len(locks.held)} thread(s)"
        return f"<PostgresLock {self.url!r} {state}>"

    def fencing_token(self) -> int:
        """During an exclusive hold: an integer greater than the token of
        every earlier exclusive grant of this lock that asked for one, by any
        client of the server, restarts included. Pass it with every write to
        the storage the lock guards, and have the storage refuse a token
        smaller than the largest it has seen (README: Fencing tokens).

        One round trip, the first time in a hold. Raises LockError when no
        exclusive lock is held, or when the table of tokens cannot be used
        (saying what to grant: the lock stays held), and LockLost."""
        owner = self._owner()
        handle = self._locks.held.get(owner)
        if handle is None:
            raise self._locks.not_held(owner)
        return self._backend.fencing_token(handle)

    def holders(self) -> list[PostgresHolder]:
        """The sessions holding this lock now, in this database: each a
        PostgresHolder(pid, kind, client, application), pid being the server
        process's (pg_stat_activity's). Raises ConnectionError, or LockError
        (closed, or a statement the server failed)."""
        if self._locks.closed:
            raise self._locks.misuse(None)
        return self._backend.holders()
