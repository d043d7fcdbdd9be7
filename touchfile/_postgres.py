"""PostgreSQL advisory locks: the backend for locks shared by many machines.

A handle is one connection, that is one server session. Advisory locks
belong to sessions and are re-entrant within one, so a handle serves one
owner at a time (the acquisition path's pool, Locks.idle, sees to it): two
threads never share a session while either holds or waits, and exclude each
other as two processes do. A session's locks end with it, as a process's
flock() locks end with it.

Every statement goes through libpq's non-blocking interface (psycopg.pq) and
this module's own poll(), so a wait blocks on two descriptors, the
connection's socket and its waiter's pipe, and wakes for nothing else. The
deadline is the server's lock_timeout, set from the remaining time in the
very statement that waits. A cancel writes to the waiter's pipe; the waiting
thread then sends the server a cancel request, so neither ctx.cancel()'s
caller nor an event loop ever waits on the network. A cancel request that
reaches the server between statements is ignored there, so it is sent again
every RESEND seconds until the wait ends. A server that has not answered
GRACE seconds after a cancel, or after the deadline, has its session closed
(which ends whatever the session had), and the wait returns. A try has the
acquisition's deadline too: a server silent GRACE seconds past it loses the
session, and the try counts as busy.
"""

from __future__ import annotations

import _thread
import contextlib
import math
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from typing import NamedTuple
from urllib.parse import quote

import psycopg
from psycopg import pq

from ._context import Context
from ._errors import LockError, LockLost
from ._kinds import EXCLUSIVE, SHARED, LockType
from ._native import Outcome

RESEND = 0.1
GRACE = 2.0
# A wait whose session ends (a server restart) connects again, backing off
# from RECONNECT_FIRST to RECONNECT_MAX seconds between tries.
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0
# How a session cut off by a silent network is found out, unless the DSN
# says otherwise (libpq's keepalives_* and tcp_user_timeout): no packet for
# KEEPALIVE_IDLE s, then KEEPALIVE_COUNT probes KEEPALIVE_INTERVAL s apart
# (11 s); data unacknowledged for TCP_USER_TIMEOUT s. The server is told to
# give up SERVER_LATER s after that, so that the holder learns it lost before
# the server can grant the lock to anyone else.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT = 10
SERVER_LATER = 5
# The fencing tokens' table: one row per key that has handed out a token.
FENCING_TABLE = "public.touchfile_fencing"

_monotonic = time.monotonic

_INT8, _TEXT, _OID = 20, 25, 26
_TRY = {
    EXCLUSIVE: b"SELECT pg_catalog.pg_try_advisory_lock($1)",
    SHARED: b"SELECT pg_catalog.pg_try_advisory_lock_shared($1)",
}
# Functions are named with their schema, so that nothing on a search_path
# stands in for them. set_config() comes first in the target list, so
# lock_timeout is in force when pg_advisory_lock() starts to wait.
_SET_TIMEOUT = b"SELECT pg_catalog.set_config('lock_timeout', $2, false), "
_WAIT = {
    EXCLUSIVE: _SET_TIMEOUT + b"pg_catalog.pg_advisory_lock($1)",
    SHARED: _SET_TIMEOUT + b"pg_catalog.pg_advisory_lock_shared($1)",
}
_RELEASE = b"SELECT pg_catalog.pg_advisory_unlock_all()"
# A role's or database's settings must not end our statements or sessions:
# statement_timeout would end a wait as if it were cancelled, and
# idle_session_timeout would end a session that holds a lock.
_SETUP = (
    "SELECT pg_catalog.set_config('statement_timeout', '0', false),"
    " pg_catalog.set_config('idle_in_transaction_session_timeout', '0', false)"
)
_SETUP_14 = ", pg_catalog.set_config('idle_session_timeout', '0', false)"  # PostgreSQL 14+
_SETUP_17 = ", pg_catalog.set_config('transaction_timeout', '0', false)"  # PostgreSQL 17+
_HASH = ", pg_catalog.hashtextextended($1, 0)"
_FENCE = (
    f"INSERT INTO {FENCING_TABLE} AS f (key, token) VALUES ($1, 1) "
    "ON CONFLICT (key) DO UPDATE SET token = f.token + 1 RETURNING f.token"
).encode()
_FENCE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {FENCING_TABLE} (key bigint PRIMARY KEY, token bigint NOT NULL)"
).encode()
_HOLDERS = b"""
SELECT l.pid, l.mode, a.client_addr, a.client_port, a.application_name
FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = $1 AND l.objid = $2
  AND l.database = (SELECT oid FROM pg_catalog.pg_database
                    WHERE datname = pg_catalog.current_database())
ORDER BY l.pid
"""

_QUERY_CANCELED = b"57014"
_UNDEFINED_TABLE = b"42P01"
_LOCK_NOT_AVAILABLE = b"55P03"
_INT64 = range(-(2**63), 2**63)
_MAX_MS = 2**31 - 1  # the longest lock_timeout, and poll() timeout: 24.8 days
# libpq 17 and later can send a cancel request without blocking.
_NONBLOCKING_CANCEL = psycopg.capabilities.has_cancel_safe()


class PostgresHolder(NamedTuple):
    """A session holding a PostgreSQL lock: its server process id (as in
    pg_stat_activity, for pg_terminate_backend()), the kind of lock, the
    client's address ("local" for a Unix socket; None where the server hides
    it from this role) and its application_name."""

    pid: int
    kind: LockType
    client: str | None
    application: str | None

    @property
    def command(self) -> str:
        """Who it is, in one line (the command's --holders table shows this)."""
        return f"{self.application or '?'} from {self.client or '?'}"


class PgHandle:
    """One connection (one server session), and the process that opened it."""

    __slots__ = (
        "__weakref__",
        "closed",
        "conn",
        "ctx",
        "holds",
        "kind",
        "lost",
        "pending",
        "pgconn",
        "pid",
        "since",
        "sock",
        "token",
        "using",
        "watched",
        "why",
    )

    def __init__(self) -> None:
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.closed = True  # a plain attribute: read on every release
        self.sock = -1
        self.pid = 0
        self.holds = False  # the session may hold the lock: release() unlocks
        self.kind: LockType = EXCLUSIVE  # of the lock held
        self.lost = False  # the session ended while it held the lock
        self.watched = False  # by _watcher, while it holds the lock
        self.ctx: Context | None = None  # the holder's held_context(), once asked for
        self.since = 0.0  # when the hold began, while the logger takes DEBUG
        self.token: int | None = None  # the hold's fencing token, once asked for
        self.why = ""  # how the session ended, once lost
        # Held by a statement on a held session: the holder's fencing_token()
        # and a release() (its own, or close()'s from another thread).
        self.using = threading.Lock()
        # A cancel request still on its way: the next statement waits for
        # it, which it could otherwise cancel.
        self.pending: _Cancel | None = None

    def attach(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.conn, self.pgconn = conn, conn.pgconn
        self.sock, self.pid, self.closed = conn.pgconn.socket, os.getpid(), False
        self.holds, self.pending, self.lost = False, None, False

    def close(self) -> None:
        """End the session (and with it every lock it holds)."""
        if self.watched:
            _watcher().unwatch(self)
        conn, self.conn = self.conn, None
        self.closed = True
        if self.pending is not None:
            self.pending.close()
            self.pending = None
        if conn is None:
            return
        if self.pid != os.getpid():
            # A copy in a forked child: the session is the parent's. libpq
            # would tell the server to end it, so it gets /dev/null to talk to.
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.dup2(null, self.sock, inheritable=False)
            finally:
                os.close(null)
        conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, say
            self.close()


class PgWaiter:
    """One wait, until deadline (time.monotonic(); math.inf for none) or cancel()."""

    __slots__ = ("deadline", "mutex", "reason", "wake")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reason: Outcome | None = None  # why the wait must end, once it must
        self.mutex = threading.Lock()
        self.wake = -1  # the pipe's write end while the wait blocks

    def cancel(self, reason: Outcome) -> None:
        with self.mutex:
            if self.reason is not None:
                return
            self.reason = reason
            if self.wake >= 0:  # under the mutex: the wait closes it under it too
                with contextlib.suppress(BlockingIOError):  # full: one is enough
                    os.write(self.wake, b"\0")


class PostgresBackend:
    """Advisory locks on one 64-bit key, in the database the DSN names."""

    native = True  # the server blocks the waiter, as the kernel does
    remote = True  # every step is a round trip: asyncio runs them in a thread

    def __init__(self, lock: str | int, dsn: str | None) -> None:
        if isinstance(lock, bool) or not isinstance(lock, (str, int)):
            raise TypeError(f"a lock name must be a str or an int key, not {lock!r}")
        if isinstance(lock, int) and lock not in _INT64:
            raise ValueError(f"an int key must fit in 64 signed bits, not {lock}")
        if isinstance(lock, str) and (not lock or "\0" in lock):
            raise ValueError(f"a lock name must be a non-empty str without NUL, not {lock!r}")
        if dsn is not None and not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str or None, not {dsn!r}")
        self.lock = lock
        self.key = lock if isinstance(lock, int) else None  # hashed by the server on connect
        self._dsn = dsn or ""
        try:
            given = psycopg.conninfo.conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError as error:
            message = _redacted(_first_line(error), self._dsn)
            if re.search(r"://[^/@]*:[^@]*@|password\s*=", self._dsn):
                # libpq quotes the part it could not parse, which may hold the password
                message = re.sub(r'"[^"]*"', lambda m: _unless_in(m[0], self._dsn), message)
            raise ValueError(f"bad PostgreSQL DSN: {message}") from None
        # What libpq will use: the DSN, then PG* environment variables.
        self._params = {o.keyword.decode(): o.val.decode() for o in _defaults() if o.val}
        self._params.update({k: str(v) for k, v in given.items() if v is not None})
        self._own_name = "application_name" not in self._params
        defaults = {
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE,
            "keepalives_interval": KEEPALIVE_INTERVAL,
            "keepalives_count": KEEPALIVE_COUNT,
            "tcp_user_timeout": TCP_USER_TIMEOUT * 1000,
        }
        self._keepalives = {k: v for k, v in defaults.items() if k not in self._params}
        # The server's side of it: SERVER_LATER s after ours gives up.
        idle = int(self._params.get("keepalives_idle", KEEPALIVE_IDLE)) + SERVER_LATER
        user_ms = int(self._params.get("tcp_user_timeout", TCP_USER_TIMEOUT * 1000))
        self._server_keepalives = (
            f", pg_catalog.set_config('tcp_keepalives_idle', '{idle}', false)"
            f", pg_catalog.set_config('tcp_keepalives_interval', "
            f"'{self._params.get('keepalives_interval', KEEPALIVE_INTERVAL)}', false)"
            f", pg_catalog.set_config('tcp_keepalives_count', "
            f"'{self._params.get('keepalives_count', KEEPALIVE_COUNT)}', false)"
        )
        later = user_ms + SERVER_LATER * 1000 if user_ms else 0  # 0: the system's default
        self._server_user_timeout = f", pg_catalog.set_config('tcp_user_timeout', '{later}', false)"
        self.name = _url(self._params, lock)
        self._named = False  # True once name says where libpq connected
        self._info: PgHandle | None = None  # holders()' own connection
        self._info_mutex = threading.Lock()
        self._discarded = False

    # ---- handles ------------------------------------------------------------

    def open(self) -> PgHandle:
        handle = PgHandle()
        try:
            self._connect(handle)
        except ConnectionError:
            if not self._named:
                raise  # the first connection: a DSN must be seen to work
            # The server is down (restarting, say): a try or a wait on this
            # handle connects, until its deadline, as on a pooled one.
        return handle

    def _connect(self, handle: PgHandle, deadline: float = math.inf) -> None:
        """Connect handle (again): a new session, set up for locking. The
        connection attempt ends by deadline (libpq's 2 s at least)."""
        handle.close()
        extra: dict[str, str] = {}
        if self._own_name:
            extra["application_name"] = _application_name()
        if "connect_timeout" not in self._params:
            # libpq's default is to wait for ever; a wait's deadline may be sooner.
            left = min(deadline - _monotonic(), 10.0)
            extra["connect_timeout"] = str(max(2, math.ceil(left)))
        # The server hashes the name after converting it from the client's
        # encoding: every client must send it alike to get the same key.
        extra["client_encoding"] = "UTF8"
        for name, value in self._keepalives.items():
            extra[name] = str(value)
        try:
            conninfo = psycopg.conninfo.make_conninfo(self._dsn, **extra)
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as error:
            raise _unreachable(error, self._params, self._dsn) from None
        handle.attach(conn)
        try:
            version = conn.pgconn.server_version
            setup = _SETUP + self._server_keepalives
            setup += self._server_user_timeout if version >= 120000 else ""  # PostgreSQL 12+
            setup += _SETUP_14 if version >= 140000 else ""
            setup += _SETUP_17 if version >= 170000 else ""
            if self.key is None:
                assert isinstance(self.lock, str)
                row = self._query(handle, (setup + _HASH).encode(), [self.lock.encode()], [_TEXT])
                self.key = int(row[-1] or b"")
            else:
                self._query(handle, setup.encode(), [], [])
        except BaseException:
            handle.close()
            raise
        if not self._named:  # where libpq went, now that it is known
            info = conn.info
            actual = {"host": info.host, "port": str(info.port), "user": info.user}
            self.name = _url({**actual, "dbname": info.dbname}, self.lock)
            self._named = True

    def try_lock(self, handle: PgHandle, kind: LockType, deadline: float) -> bool:
        key = [self._key()]
        try:
            if handle.closed:
                raise ConnectionError("not connected")  # opened as the server was down
            row = self._query(handle, _TRY[kind], key, [_INT8], deadline)
        except ConnectionError:
            # An idle pooled connection that the server ended (a restart, an
            # idle timeout): once more, on a new one.
            try:
                self._connect(handle, deadline)
            except ConnectionError:
                if deadline > _monotonic():
                    return False  # as busy: the wait reconnects until the deadline
                raise
            row = self._query(handle, _TRY[kind], key, [_INT8], deadline)
        if bool(row) and row[0] == b"t":  # no row: silent past the deadline
            self._granted(handle, kind)
            return True
        return False

    def _granted(self, handle: PgHandle, kind: LockType) -> None:
        handle.holds, handle.kind, handle.token = True, kind, None
        _watcher().watch(handle)

    def waiter(self, deadline: float) -> PgWaiter:
        return PgWaiter(deadline)

    def wait(self, handle: PgHandle, kind: LockType, waiter: PgWaiter) -> Outcome:
        wake, poke = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            with waiter.mutex:
                if waiter.reason is not None:
                    return waiter.reason
                waiter.wake = poke
            delay = RECONNECT_FIRST
            while True:
                if handle.closed:  # the server restarted, say: wait on a new session
                    outcome = self._reconnect(handle, waiter, wake, delay)
                    if outcome is not None:
                        return outcome
                    delay = min(delay * 2, RECONNECT_MAX)
                try:
                    return self._wait_once(handle, kind, waiter, wake)
                except ConnectionError:
                    if waiter.reason is not None:
                        return waiter.reason
                    # The session ended as it waited: a restart is not a
                    # failure of the wait, which goes on until its deadline.
        finally:
            with waiter.mutex:
                waiter.wake = -1
            os.close(wake)
            os.close(poke)

    def _reconnect(
        self, handle: PgHandle, waiter: PgWaiter, wake: int, delay: float
    ) -> Outcome | None:
        """Connect handle again, backing off by delay (until the deadline,
        or a cancel): None once connected, else why the wait ends."""
        while True:
            try:
                self._connect(handle, waiter.deadline)
                return None
            except ConnectionError:
                pass
            until = min(_monotonic() + delay, waiter.deadline)
            if _poll([(wake, select.POLLIN)], until):
                os.read(wake, 64)
            if waiter.reason is not None:
                return waiter.reason
            if waiter.deadline <= _monotonic():
                return Outcome.DEADLINE
            delay = min(delay * 2, RECONNECT_MAX)

    def _wait_once(self, handle: PgHandle, kind: LockType, waiter: PgWaiter, wake: int) -> Outcome:
        """One wait statement on handle's session. Raises ConnectionError if
        the session ends."""
        remaining = waiter.deadline - _monotonic()
        if waiter.reason is not None:
            return waiter.reason
        if remaining <= 0:
            return Outcome.DEADLINE
        # lock_timeout is in whole milliseconds, and 0 turns it off (for no
        # deadline, or one beyond its range: then this side ends the wait).
        ms = max(1, math.ceil(remaining * 1000)) if remaining * 1000 <= _MAX_MS else 0
        try:
            self._send(handle, _WAIT[kind], [self._key(), b"%d" % ms], [_INT8, _TEXT])
            late = GRACE if ms > 0 else 0.0  # the server's lock_timeout, or ours
            if not self._answer(handle, waiter.deadline, late, waiter, wake):
                return waiter.reason or Outcome.DEADLINE  # silent: the session is closed
            self._result(handle)
        except _Refused as refused:
            # The server may have granted the lock just as lock_timeout (or a
            # cancel request) ended the statement: the error is still sent,
            # and a session-level advisory lock survives it. The handle goes
            # back to the pool as one that may hold it, so it is unlocked first.
            handle.holds = True
            if refused.state == _LOCK_NOT_AVAILABLE:
                return Outcome.DEADLINE
            if refused.state == _QUERY_CANCELED and waiter.reason is not None:
                return waiter.reason
            raise self._error(refused) from None
        except ConnectionError:
            raise
        except BaseException:
            if not handle.closed:  # KeyboardInterrupt, say: end the wait, then the session
                with contextlib.suppress(Exception):
                    cancel = _Cancel(handle)
                    cancel.send()
                    cancel.finish(_monotonic() + 0.5)
                handle.close()
            raise
        self._granted(handle, kind)
        return Outcome.OK

    def release(self, handle: PgHandle) -> None:
        with handle.using:
            self._release(handle)

    def _release(self, handle: PgHandle) -> None:
        if handle.watched:
            _watcher().unwatch(handle)  # from here on, only this thread uses handle
        if handle.lost:
            raise self._lost_hold(handle.why)  # handle is closed: it never holds again
        if handle.closed or not handle.holds:
            return
        try:
            self._query(handle, _RELEASE, [], [])
        except ConnectionError as error:  # the session ended, and its lock with it
            raise self._lost_hold(str(error)) from None
        handle.holds = False

    def _lost_hold(self, why: str) -> LockLost:
        return LockLost(f"the lock on {self.name} was lost while held: {why}", self.name)

    def fencing_token(self, handle: PgHandle) -> int:
        """The hold's fencing token: one more than the last one handed out
        for this key (kept in FENCING_TABLE). Raises LockLost, or LockError
        when the table cannot be used (naming the privilege to grant)."""
        if handle.token is not None:
            return handle.token
        if handle.kind is not EXCLUSIVE:
            raise LockError(f"only an exclusive hold on {self.name} has a fencing token", self.name)
        with handle.using:
            if handle.watched:
                _watcher().unwatch(handle)
            try:
                if handle.lost or handle.closed or not handle.holds:
                    raise self._lost_hold(handle.why or "the session was closed")
                try:
                    row = self._fence(handle)
                except ConnectionError as error:
                    raise self._lost_hold(str(error)) from None
            finally:
                if not handle.closed:
                    _watcher().watch(handle)
            handle.token = int(row[0] or b"")
            return handle.token

    def _fence(self, handle: PgHandle) -> list[bytes | None]:
        key = [self._key()]
        try:
            return self._run(handle, _FENCE, key, [_INT8])[0]
        except _Refused as refused:
            if refused.state != _UNDEFINED_TABLE:
                raise self._fencing_error(refused) from None
        try:
            self._run(handle, _FENCE_TABLE, [], [])
        except _Refused as refused:
            # Another client made it as we did (the catalogs' unique indexes
            # say so, though IF NOT EXISTS): it is there now.
            if refused.state not in (b"42P07", b"42710", b"23505"):
                raise self._fencing_error(refused) from None
        try:
            return self._run(handle, _FENCE, key, [_INT8])[0]
        except _Refused as refused:
            raise self._fencing_error(refused) from None

    def _fencing_error(self, refused: _Refused) -> LockError:
        return LockError(
            f"no fencing token for {self.name}: {refused.message}. The lock is held, "
            f"without a token. To hand out tokens, have the table's owner run: "
            f"{_FENCE_TABLE.decode()}; GRANT SELECT, INSERT, UPDATE ON {FENCING_TABLE} TO "
            f"{self._params.get('user') or 'the role'}",
            self.name,
        )

    def close(self, handle: PgHandle) -> None:
        handle.close()

    def lock_id(self, handle: PgHandle) -> object:
        return "postgresql", self.name, self.key  # the server and database (its URL), the key

    def holders(self) -> list[PostgresHolder]:
        key = self._key()
        unsigned = int(key) & 0xFFFF_FFFF_FFFF_FFFF
        # pg_locks shows a bigint key as two oids, its high and low halves.
        params = [str(unsigned >> 32).encode(), str(unsigned & 0xFFFF_FFFF).encode()]
        with self._info_mutex:
            if self._discarded:
                raise LockError(f"{self.name} is closed", self.name)
            info = self._info
            if info is None or info.closed or info.pid != os.getpid():
                if info is not None:
                    info.close()
                info = self._info = self.open()
            try:
                rows = self._rows(info, _HOLDERS, params, [_OID, _OID])
            except ConnectionError:
                self._connect(info)
                rows = self._rows(info, _HOLDERS, params, [_OID, _OID])
        found = []
        for pid, mode, addr, port, application in rows:
            kind = EXCLUSIVE if mode == b"ExclusiveLock" else SHARED
            if port == b"-1":
                client: str | None = "local"
            elif addr is not None:
                client = f"{addr.decode()}:{(port or b'?').decode()}"
            else:
                client = None
            app = application.decode(errors="replace") if application is not None else None
            found.append(PostgresHolder(int(pid or b"0"), kind, client, app))
        return found

    def discard(self) -> None:
        with self._info_mutex:
            self._discarded = True
            if self._info is not None:
                self._info.close()
                self._info = None

    def forget_inherited(self) -> None:
        # In a forked child: another thread of the parent may have held the
        # mutex, and the session is the parent's (closed without a word).
        self._info_mutex = threading.Lock()
        if self._info is not None:
            self._info.close()
            self._info = None

    # ---- statements ---------------------------------------------------------

    def _key(self) -> bytes:
        return str(self.key).encode()

    def _query(
        self,
        handle: PgHandle,
        sql: bytes,
        params: list[bytes],
        types: list[int],
        deadline: float = math.inf,
    ) -> list[bytes | None]:
        """Run sql and return its one row (none if the server was silent
        GRACE seconds past deadline: then handle is closed). Raises
        ConnectionError (and closes handle) when the connection is lost,
        LockError for a server error."""
        rows = self._rows(handle, sql, params, types, deadline)
        return rows[0] if rows else []

    def _rows(
        self,
        handle: PgHandle,
        sql: bytes,
        params: list[bytes],
        types: list[int],
        deadline: float = math.inf,
    ) -> list[list[bytes | None]]:
        """_run(), a server error raised as LockError."""
        try:
            return self._run(handle, sql, params, types, deadline)
        except _Refused as refused:
            raise self._error(refused) from None

    def _run(
        self,
        handle: PgHandle,
        sql: bytes,
        params: list[bytes],
        types: list[int],
        deadline: float = math.inf,
    ) -> list[list[bytes | None]]:
        """Run sql: its rows (none if the server was silent GRACE seconds
        past deadline: then handle is closed). Raises _Refused for a server
        error, ConnectionError (and closes handle) when the connection is lost."""
        try:
            self._send(handle, sql, params, types)
            if not self._answer(handle, deadline, GRACE):
                return []
            result = self._result(handle)
        except _Refused:
            raise
        except BaseException:
            handle.close()  # mid-statement (KeyboardInterrupt, say): unusable
            raise
        return [
            [result.get_value(row, col) for col in range(result.nfields)]
            for row in range(result.ntuples)
        ]

    def _send(self, handle: PgHandle, sql: bytes, params: list[bytes], types: list[int]) -> None:
        if handle.pending is not None:  # it must not reach the server after sql does
            handle.pending.finish(_monotonic() + GRACE)
            handle.pending = None
        pgconn = handle.pgconn
        try:
            pgconn.send_query_params(sql, list(params), list(types))
            while pgconn.flush():
                _poll([(handle.sock, select.POLLIN | select.POLLOUT)], math.inf)
                pgconn.consume_input()
        except psycopg.OperationalError as error:
            raise self._lost(handle, error) from None

    def _answer(
        self,
        handle: PgHandle,
        deadline: float,
        late: float,
        waiter: PgWaiter | None = None,
        wake: int = -1,
    ) -> bool:
        """Block until the server has answered (True). A server silent late
        seconds past deadline, or GRACE seconds after waiter's cancel, has
        its session closed (False): it is gone, or stuck. With late=0 (a
        deadline beyond lock_timeout's range) the wait is cancelled at the
        deadline instead."""
        pgconn = handle.pgconn
        give_up = deadline + late if late else math.inf
        cancel: _Cancel | None = None
        try:
            pgconn.consume_input()
            while pgconn.is_busy():
                now = _monotonic()
                if waiter is not None:
                    if waiter.reason is None and not late and deadline <= now:
                        waiter.cancel(Outcome.DEADLINE)
                    if waiter.reason is not None and cancel is None:
                        cancel = _Cancel(handle)
                        give_up = min(give_up, now + GRACE)
                    if cancel is not None and cancel.due(now):
                        cancel.send()  # again, if the last one came between statements
                if give_up <= now:
                    handle.close()
                    return False
                watch = [(handle.sock, select.POLLIN)]
                until = give_up
                if waiter is not None:
                    watch.append((wake, select.POLLIN))
                    if not late:
                        until = min(until, deadline)
                if cancel is not None:
                    watch += cancel.watch()
                    until = min(until, cancel.next_at)
                for fd, _ in _poll(watch, until):
                    if fd == wake:
                        os.read(wake, 64)
                    elif cancel is not None and fd == cancel.fd:
                        cancel.step()
                pgconn.consume_input()
        except psycopg.OperationalError as error:
            raise self._lost(handle, error) from None
        if cancel is not None and not cancel.done:
            handle.pending = cancel  # the next statement waits for it
        return True

    def _result(self, handle: PgHandle) -> pq.abc.PGresult:
        """The answer to the statement sent. Raises _Refused for an error,
        ConnectionError if the server ended the session."""
        pgconn = handle.pgconn
        answer = error = None
        while True:
            result = pgconn.get_result()
            if result is None:
                break
            if result.status == pq.ExecStatus.FATAL_ERROR:
                error = error or result
            elif answer is None:
                answer = result
        if error is not None:
            if pgconn.status == pq.ConnStatus.BAD:
                raise self._lost(handle, error.error_message)
            state = error.error_field(pq.DiagnosticField.SQLSTATE) or b""
            raise _Refused(state, _message(error.error_message))
        if answer is None:
            raise self._lost(handle, "no answer to a statement")
        return answer

    def _error(self, refused: _Refused) -> LockError:
        return LockError(f"{self.name}: {refused.message}", self.name)

    def _lost(self, handle: PgHandle, error: object) -> ConnectionError:
        """The connection is gone: close handle, and if it held the lock (its
        holder's own statement found out first), the hold is lost."""
        handle.close()
        if handle.holds and not handle.lost:
            handle.lost, handle.why = True, _message(error)
            ctx = handle.ctx  # after handle.lost: see held_context()
            if ctx is not None:
                ctx.cancel()
        return ConnectionError(
            f"lost the connection to PostgreSQL ({_where(self._params)}): {_message(error)}"
        )


class _Cancel:
    """Cancel requests for a session's statement, sent without blocking (a
    connection of their own, driven by the waiting thread's poll()), the
    next RESEND seconds after the last one is through."""

    __slots__ = ("conn", "done", "fd", "handle", "next_at", "wants")

    def __init__(self, handle: PgHandle) -> None:
        self.handle = handle
        self.conn: pq.abc.PGcancelConn | None = None
        self.done = True  # no request on its way
        self.fd = -1
        self.wants = 0
        self.next_at = -math.inf  # when the next one is due

    def due(self, now: float) -> bool:
        return self.done and self.next_at <= now

    def send(self) -> None:
        self.close()
        pgconn = self.handle.pgconn
        if not _NONBLOCKING_CANCEL:  # libpq before 17: the old blocking request
            with contextlib.suppress(psycopg.Error):
                pgconn.get_cancel().cancel()
            self.next_at = _monotonic() + RESEND
            return
        try:
            self.conn = pgconn.cancel_conn()
            self.conn.start()
        except psycopg.Error:
            self.close()
            self.next_at = _monotonic() + RESEND
            return
        self.done, self.next_at = False, math.inf  # due again once through
        self.step()

    def step(self) -> None:
        """Drive the request on (its socket is ready)."""
        assert self.conn is not None
        try:
            status = self.conn.poll()
        except psycopg.Error:
            status = pq.PollingStatus.FAILED
        if status in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
            self.fd = self.conn.socket
            reading = status == pq.PollingStatus.READING
            self.wants = select.POLLIN if reading else select.POLLOUT
            return
        self.close()  # through (OK), or failed: either way, again if unanswered
        self.next_at = _monotonic() + RESEND

    def watch(self) -> list[tuple[int, int]]:
        return [] if self.done else [(self.fd, self.wants)]

    def finish(self, limit: float) -> None:
        """See the request on its way through (until limit at most)."""
        while not self.done and _monotonic() < limit:
            if _poll(self.watch(), limit):
                self.step()
        self.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        self.done, self.fd = True, -1
        if conn is not None:
            conn.finish()


class _Watcher:
    """One thread of the process's own that watches the sessions holding a
    lock, and marks a session lost the moment its connection ends (the
    server's FATAL and close, a reset, a keepalive timeout): its holder's
    held_context() is cancelled, and release() raises LockLost. A session is
    watched only between statements: its holder unwatches it (which waits
    for a look in progress) before using it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.mutex = threading.Lock()
        self.epoll = select.epoll()
        self.watched: dict[int, PgHandle] = {}
        self.running = False

    def watch(self, handle: PgHandle) -> None:
        with self.mutex:
            self.epoll.register(handle.sock, select.EPOLLIN | select.EPOLLRDHUP)
            self.watched[handle.sock] = handle
            handle.watched = True
            if not self.running:
                self.running = True
                # Signals are for the application's threads (the command's
                # sigwaitinfo(), Python's handlers), never for this one.
                old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                try:
                    _thread.start_new_thread(self.run, ())
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def unwatch(self, handle: PgHandle) -> None:
        with self.mutex:
            if handle.watched:
                handle.watched = False
                # Not there in a forked child: the parent's watcher had it.
                if self.watched.get(handle.sock) is handle:
                    del self.watched[handle.sock]
                    with contextlib.suppress(OSError):
                        self.epoll.unregister(handle.sock)

    def run(self) -> None:
        while True:
            events = self.epoll.poll()
            lost = []
            with self.mutex:
                for fd, _ in events:
                    handle = self.watched.get(fd)
                    if handle is None or _alive(handle):
                        continue
                    handle.watched = False
                    del self.watched[fd]
                    with contextlib.suppress(OSError):  # libpq closed it, on EOF
                        self.epoll.unregister(fd)
                    handle.lost = True
                    handle.close()
                    lost.append(handle)
            for handle in lost:  # after handle.lost: see held_context()
                ctx = handle.ctx
                if ctx is not None:
                    ctx.cancel()


def _alive(handle: PgHandle) -> bool:
    """Is the session still there? (Reads what the server sent: its FATAL.)"""
    pgconn = handle.pgconn
    try:
        pgconn.consume_input()
    except psycopg.OperationalError as error:
        handle.why = _message(error)
        return False
    if pgconn.status == pq.ConnStatus.BAD:
        handle.why = _message(pgconn.error_message) or "the connection was closed"
        return False
    return True


_the_watcher: _Watcher | None = None
_making = (os.getpid(), threading.Lock())  # guards making it, in this process


def _watcher() -> _Watcher:
    """The process's watcher (a new one in a forked child: threads do not fork)."""
    global _the_watcher, _making
    watcher = _the_watcher
    if watcher is not None and watcher.pid == os.getpid():
        return watcher
    if _making[0] != os.getpid():  # a forked child: the parent's may be held
        _making = (os.getpid(), threading.Lock())
    with _making[1]:
        watcher = _the_watcher
        if watcher is None or watcher.pid != os.getpid():
            watcher = _the_watcher = _Watcher()
        return watcher


def _poll(watch: list[tuple[int, int]], until: float) -> list[tuple[int, int]]:
    """poll() on (fd, events) pairs until the absolute time until."""
    poller = select.poll()
    for fd, events in watch:
        poller.register(fd, events)
    if until == math.inf:
        return poller.poll()
    left = until - _monotonic()
    return poller.poll(min(_MAX_MS, math.ceil(left * 1000)) if left > 0 else 0)


class _Refused(Exception):
    """The server answered a statement with an error (its SQLSTATE, and message)."""

    def __init__(self, state: bytes, message: str) -> None:
        super().__init__(state, message)
        self.state, self.message = state, message


# ---- connecting, and saying where -------------------------------------------


def _defaults() -> list[pq.ConninfoOption]:
    return list(pq.Conninfo.get_defaults())


def _url(params: dict[str, str], lock: str | int) -> str:
    """The lock as the command names it: postgresql://user@host:port/db#name."""
    host = params.get("host", "").split(",")[0]
    where = quote(host, safe="") if host.startswith("/") else host
    user = quote(params.get("user", ""), safe="")
    port = params.get("port", "").split(",")[0]
    url = f"postgresql://{user}{'@' if user else ''}{where}{':' if port else ''}{port}"
    url += f"/{quote(params.get('dbname', ''), safe='')}"
    return f"{url}#{quote(lock, safe='')}" if isinstance(lock, str) else f"{url} key {lock}"


def _where(params: dict[str, str]) -> str:
    host = params.get("host") or params.get("hostaddr") or "the default socket"
    port = params.get("port")
    db = params.get("dbname") or params.get("user") or "?"
    return f"host {host}{f' port {port}' if port else ''}, database {db}"


def _message(error: object) -> str:
    """A libpq error as one line, without the levels and hints around it."""
    if isinstance(error, bytes):
        error = error.decode(errors="replace")
    text = str(error).strip()
    line = text.splitlines()[0] if text else "unknown error"
    line = re.sub(r"^(connection (failed|is bad): )?(connection to server .*? failed: )?", "", line)
    return re.sub(r"^(FATAL|ERROR):\s+", "", line).strip()


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "unknown error"


# What the server says when it refuses us, rather than cannot be reached.
_REFUSED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|no password supplied|role .* does not exist"
    r"|not permitted to log in|permission denied for database"
)


def _unreachable(error: psycopg.Error, params: dict[str, str], dsn: str) -> OSError:
    """The one line for a connection that could not be made."""
    reason = _redacted(_message(error), dsn)
    message = f"cannot connect to PostgreSQL ({_where(params)}): {reason}"
    return PermissionError(message) if _REFUSED.search(reason) else ConnectionError(message)


def _redacted(text: str, dsn: str) -> str:
    """text without the password that dsn may hold (libpq's messages may quote it)."""
    try:
        password = str(psycopg.conninfo.conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        password = ""
    if password:
        text = text.replace(password, "***")
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)


def _unless_in(quoted: str, dsn: str) -> str:
    return '"..."' if quoted[1:-1] in dsn else quoted


def redacted_url(url: str) -> str:
    """A postgresql:// URL as it may be shown: without its password."""
    return _redacted(url, "")


def _application_name() -> str:
    """What pg_stat_activity shows for our sessions: the program, its pid and
    host, within the server's 63 bytes."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program in ("", "-", "-c"):
        program = "python"
    tail = f" pid {os.getpid()} on {socket.gethostname()}"
    room = max(0, 63 - len(tail.encode()))
    return program.encode()[:room].decode(errors="ignore") + tail
