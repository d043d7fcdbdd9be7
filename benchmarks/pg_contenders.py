"""PostgreSQL advisory locks: touchfile.postgres, raw psycopg 3 (the floor) and the peers.

Each adapter has contenders.Lock's face, made the way a user of that library
writes it: acquire() returns False when the timeout passed or the wait was
cancelled. Each contender locks a name (or key) of its own, and every lock
object is a server session of its own (pals and the SQLAlchemy ones through an
engine each, tooz through a new connection per acquire, its own way).

pals and sqlalchemy-dlock go through SQLAlchemy with psycopg 3
(``postgresql+psycopg://``), the driver touchfile and the floor use; tooz's
driver needs psycopg2.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.contenders import Lock, _no_cancel, _pairs

GUARD = 30.0  # the timeout of a wait that should never reach it


@dataclass(frozen=True)
class Where:
    """One server, as each library is told where it is (all over the Unix socket)."""

    dsn: str  # libpq key=value: touchfile and psycopg
    host: str  # the socket's directory
    port: int
    user: str
    dbname: str

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+psycopg://{self.user}@/{self.dbname}?host={self.host}&port={self.port}"

    @property
    def tooz_url(self) -> str:
        # tooz's driver takes the host from the query string before the URL's own.
        return f"postgresql://{self.user}@localhost/{self.dbname}?host={self.host}&port={self.port}"


def int_key(name: str) -> int:
    """A signed 64-bit key for a name, for the libraries that take an int."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class TouchFilePg:
    """touchfile.postgres.PostgresLock: the lock name hashed by the server."""

    def __init__(self, where: Where, name: str) -> None:
        from touchfile.postgres import PostgresLock

        self.lk = PostgresLock(name, where.dsn)

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        from touchfile import EXCLUSIVE, SHARED, LockCancelled, LockTimeout

        try:
            self.lk.acquire(SHARED if shared else EXCLUSIVE, timeout, cancel)
        except (LockTimeout, LockCancelled):
            return False
        return True

    def release(self) -> None:
        self.lk.release()

    def loop(self, n: int) -> None:
        _pairs(self.lk.acquire, self.lk.release, n)

    def canceller(self) -> tuple[Any, Callable[[], None]]:
        from touchfile import Context

        ctx = Context.with_cancel()
        return ctx, ctx.cancel

    def close(self) -> None:
        self.lk.close()


class RawPsycopg:
    """The floor: one autocommit psycopg 3 connection, pg_advisory_lock()/pg_advisory_unlock().

    A deadline is the session's lock_timeout, SET only when it changes; a
    cancel is conn.cancel_safe() from another thread.
    """

    LOCK = "SELECT pg_advisory_lock(%s)"
    LOCK_SHARED = "SELECT pg_advisory_lock_shared(%s)"
    UNLOCK = "SELECT pg_advisory_unlock(%s)"
    UNLOCK_SHARED = "SELECT pg_advisory_unlock_shared(%s)"

    def __init__(self, where: Where, name: str) -> None:
        import psycopg

        self.errors = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)
        self.conn = psycopg.connect(where.dsn, autocommit=True)
        self.cur = self.conn.cursor()
        self.key = int_key(name)
        self.lock_timeout: int | None = None  # ms, as last SET; None: the database's default
        self.unlock = self.UNLOCK

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        ms = None if timeout is None else max(1, math.ceil(timeout * 1000))
        if ms != self.lock_timeout:
            self.cur.execute("RESET lock_timeout" if ms is None else f"SET lock_timeout = {ms}")
            self.lock_timeout = ms
        try:
            self.cur.execute(self.LOCK_SHARED if shared else self.LOCK, (self.key,))
        except self.errors:
            return False
        self.unlock = self.UNLOCK_SHARED if shared else self.UNLOCK
        return True

    def release(self) -> None:
        self.cur.execute(self.unlock, (self.key,))

    def loop(self, n: int) -> None:
        execute, lock, unlock, args = self.cur.execute, self.LOCK, self.UNLOCK, (self.key,)
        for _ in range(n):
            execute(lock, args)
            execute(unlock, args)

    def canceller(self) -> tuple[Any, Callable[[], None]]:
        return None, self.conn.cancel_safe

    def close(self) -> None:
        self.conn.close()


class PalsPg:
    """pals: a Locker (an SQLAlchemy engine) and its Lock, as its README has it.

    acquire() sets lock_timeout (whole ms) in a transaction of its own, then
    waits in pg_advisory_lock(); release() returns the connection to the pool.
    """

    def __init__(self, where: Where, name: str) -> None:
        import pals

        self.name = name
        self.locker = pals.Locker("touchfile-bench", where.sqlalchemy_url)
        self.locks = {False: self.locker.lock(name), True: self.locker.lock(name, shared=True)}
        self.held = self.locks[False]

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        # acquire_timeout is in ms, and 0 means its default (30 s): the longest
        # lock_timeout stands for no deadline.
        ms = 2**31 - 1 if timeout is None else max(1, math.ceil(timeout * 1000))
        lock = self.locks[shared]
        if not lock.acquire(acquire_timeout=ms):
            return False
        self.held = lock
        return True

    def release(self) -> None:
        self.held.release()

    def loop(self, n: int) -> None:
        lock = self.locks[False]
        _pairs(lock.acquire, lock.release, n)

    canceller = staticmethod(_no_cancel)

    def close(self) -> None:
        self.locker.engine.dispose()


_coordinators: dict[str, Any] = {}  # tooz: one started coordinator per URL in a process
_coordinators_mutex = threading.Lock()


def _coordinator(url: str) -> Any:
    from tooz import coordination

    with _coordinators_mutex:
        if url not in _coordinators:
            with warnings.catch_warnings():
                # "PostgreSQL driver is deprecated and will be removed in a future release"
                warnings.simplefilter("ignore", DeprecationWarning)
                coord = coordination.get_coordinator(url, b"touchfile-bench")
            coord.start()
            _coordinators[url] = coord
        return _coordinators[url]


def stop_coordinators() -> None:
    with _coordinators_mutex:
        for coord in _coordinators.values():
            with contextlib.suppress(Exception):  # a server already stopped
                coord.stop()
        _coordinators.clear()


class ToozPg:
    """tooz's PostgreSQL driver: coordinator.get_lock(name).

    acquire(blocking=True) waits in pg_advisory_lock() on a connection it opens
    for the acquire (release() closes it). A deadline is blocking=seconds:
    pg_try_advisory_lock() retried by tenacity, 1 s apart, ending in
    tenacity.RetryError; timeout= raises tooz.NotImplemented. No shared mode.
    """

    def __init__(self, where: Where, name: str) -> None:
        self.lock = _coordinator(where.tooz_url).get_lock(name.encode())

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        import tenacity

        if shared:
            raise ValueError("tooz's PostgreSQL lock has no shared mode")
        try:
            return bool(self.lock.acquire(blocking=True if timeout is None else timeout))
        except tenacity.RetryError:  # its deadline passed
            return False

    def release(self) -> None:
        self.lock.release()

    def loop(self, n: int) -> None:
        _pairs(self.lock.acquire, self.lock.release, n)

    canceller = staticmethod(_no_cancel)

    def close(self) -> None:
        if self.lock.acquired:
            self.lock.release()


class SqlAlchemyDLockPg:
    """sqlalchemy-dlock: create_sadlock(connection, name) on an engine's connection.

    timeout=None waits in pg_advisory_lock(); a timeout polls
    pg_try_advisory_lock() every `interval` seconds (default 1, at least 0.1).
    """

    def __init__(self, where: Where, name: str) -> None:
        import sqlalchemy
        from sqlalchemy_dlock.factory import create_sadlock

        self.engine = sqlalchemy.create_engine(where.sqlalchemy_url)
        self.conn = self.engine.connect()
        self.locks: dict[bool, Any] = {
            False: create_sadlock(self.conn, name),
            True: create_sadlock(self.conn, name, shared=True),
        }
        self.held = self.locks[False]

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        lock = self.locks[shared]
        if not lock.acquire(timeout=timeout):
            return False
        self.held = lock
        return True

    def release(self) -> None:
        self.held.release()

    def loop(self, n: int) -> None:
        lock = self.locks[False]
        _pairs(lock.acquire, lock.release, n)

    canceller = staticmethod(_no_cancel)

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


@dataclass(frozen=True)
class PgContender:
    key: str
    label: str
    make: Callable[[Where, str], Lock]
    waits: str  # how a wait without a deadline waits
    deadline: str  # how a deadline is kept
    poll: float  # the sleep between tries of a wait with a deadline (0: the server's lock_timeout)
    cancel: str = ""  # why it cannot cancel a wait ("": it can)
    modules: tuple[str, ...] = ()  # the optional packages it needs
    cancels_by: str = ""  # how a wait is cancelled, when it can be

    @property
    def server_deadline(self) -> bool:
        """Does a wait with a timeout still block in the server? (Else it polls.)"""
        return self.poll == 0

    def available(self) -> bool:
        try:
            for module in ("psycopg", "touchfile.postgres", *self.modules):
                __import__(module)
        except ImportError:
            return False
        return True


BLOCKS = "blocks in the server (pg_advisory_lock)"
LOCK_TIMEOUT = "the server's lock_timeout"
NO_CANCEL = "no way to cancel a wait"
PG_CONTENDERS = [
    PgContender(
        "touchfile",
        "touchfile PostgresLock",
        TouchFilePg,
        BLOCKS + "; poll() on its socket and a cancel pipe",
        LOCK_TIMEOUT + ", set in the statement that waits",
        0,
        cancels_by="ctx.cancel() from another thread: a pipe wakes the waiter, which sends "
        "the server a cancel request",
    ),
    PgContender(
        "floor",
        "floor: raw psycopg 3",
        RawPsycopg,
        BLOCKS,
        LOCK_TIMEOUT + " (SET when it changes)",
        0,
        cancels_by="conn.cancel_safe() from another thread",
    ),
    PgContender(
        "pals",
        "pals",
        PalsPg,
        BLOCKS,
        LOCK_TIMEOUT + " (whole ms), set in a transaction before the wait",
        0,
        NO_CANCEL + " (only its lock_timeout ends one)",
        ("pals",),
    ),
    PgContender(
        "tooz",
        "tooz (postgresql driver)",
        ToozPg,
        BLOCKS + "; a new connection per acquire",
        "polls pg_try_advisory_lock, tenacity backoff capped at 1 s (so 1 s apart); "
        "timeout= raises NotImplemented",
        1.0,
        NO_CANCEL,
        ("tooz", "psycopg2"),
    ),
    PgContender(
        "sqlalchemy_dlock",
        "sqlalchemy-dlock",
        SqlAlchemyDLockPg,
        BLOCKS,
        "polls pg_try_advisory_lock every 1 s (its default interval; 0.1 s at least)",
        1.0,
        NO_CANCEL,
        ("sqlalchemy_dlock",),
    ),
]
PG_BY_KEY = {c.key: c for c in PG_CONTENDERS}
PACKAGES = ("psycopg", "pals", "tooz", "psycopg2-binary", "sqlalchemy-dlock", "SQLAlchemy")
