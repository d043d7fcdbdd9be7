"""PostgresLock against a real server: exclusion between threads and processes,
shared and exclusive, deadlines and cancels (threads and asyncio), a holder
killed, psql on the same key, pool hygiene, bad DSNs, and holders()."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import Holder, hold, run_program, wait_until
from pgserver import External, Server

from touchfile import SHARED, Context, LockCancelled, LockError, LockTimeout
from touchfile._postgres import GRACE
from touchfile.postgres import PostgresHolder, PostgresLock

Pg = Server | External


@pytest.fixture
def name() -> str:
    """A lock name no other test uses."""
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def locks(pg_dsn: str, name: str) -> Iterator[list[PostgresLock]]:
    """Two PostgresLocks on name (more with make()), always closed."""
    made = [PostgresLock(name, pg_dsn), PostgresLock(name, pg_dsn)]
    yield made
    for lk in made:
        lk.close()


def ours(pg: Pg) -> list[tuple[int, str]]:
    """This process's sessions on the server: (pid, state)."""
    out = pg.psql(
        "SELECT pid, state FROM pg_stat_activity "
        f"WHERE application_name LIKE '% pid {os.getpid()} on %' ORDER BY pid"
    )
    return [(int(p), s) for p, s in (line.split("|") for line in out.splitlines() if line)]


def advisory_locks(pg: Pg, pids: list[int]) -> int:
    """How many advisory locks (granted or awaited) the sessions pids have."""
    if not pids:
        return 0
    listed = ",".join(map(str, pids))
    sql = f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid IN ({listed})"
    return int(pg.psql(sql))


def key_sql(name: str) -> str:
    return f"hashtextextended('{name}', 0)"


# ---- exclusion ------------------------------------------------------------------


def test_threads_exclude_each_other_through_one_object(pg_dsn: str, name: str) -> None:
    """Two threads on one PostgresLock: each its own session, so the second waits."""
    with PostgresLock(name, pg_dsn) as lk:
        lk.acquire()
        got: list[float] = []

        def other() -> None:
            start = time.monotonic()
            lk.acquire(timeout=10)
            got.append(time.monotonic() - start)
            lk.release()

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        assert not got  # still waiting
        lk.release()
        thread.join(10)
        assert got and got[0] >= 0.25


def test_processes_exclude_each_other_both_ways(
    pg_server: Pg, pg_dsn: str, name: str, holders: list[Holder]
) -> None:
    """A holder in another process keeps us out; then we keep it out."""
    url = pg_server.url(name)
    holder = hold(holders, url, tool="postgres")
    with PostgresLock(name, pg_dsn) as lk:
        with pytest.raises(LockTimeout):
            lk.acquire(timeout=0.2)
        released = holder.release()
        lk.acquire(timeout=5)
        assert time.monotonic() - released < 5
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, url], capture_output=True, text=True, timeout=30
        )
        assert proc.stdout.strip() == "busy", proc.stderr
        lk.release()


PROBE = """
import sys
from touchfile import LockTimeout
from touchfile.postgres import PostgresLock
dsn, _, name = sys.argv[1].partition("#")
with PostgresLock(name, dsn) as lk:
    try:
        lk.acquire(timeout=0.2)
        print("free")
    except LockTimeout:
        print("busy")
"""


def test_shared_holders_together_exclusive_alone(locks: list[PostgresLock]) -> None:
    """Shared locks are held together; an exclusive one waits for all of them,
    and a shared one waits for an exclusive holder."""
    a, b = locks
    a.acquire(SHARED)
    b.acquire(SHARED, timeout=1)  # both at once
    b.release()
    with pytest.raises(LockTimeout):
        b.acquire(timeout=0.2)  # exclusive beside a shared holder
    a.release()
    b.acquire(timeout=1)
    with pytest.raises(LockTimeout):
        a.acquire(SHARED, timeout=0.2)
    b.release()


def test_self_deadlock_through_two_objects_is_an_error(locks: list[PostgresLock]) -> None:
    """A thread holding the lock through one PostgresLock and asking for it through
    another (a second session, which the server would make wait for the first):
    LockError at once; shared after shared is granted."""
    a, b = locks
    a.acquire()
    with pytest.raises(LockError, match="already holds a lock on postgresql://"):
        b.acquire()
    a.release()
    a.acquire("shared")
    b.acquire("shared", timeout=0)
    assert a.locked() and b.locked()


def test_int_key_is_the_key_itself(pg_server: Pg, pg_dsn: str) -> None:
    """An int is used as the key: psql's pg_advisory_lock(KEY) is the same lock."""
    key = int.from_bytes(os.urandom(7), "big") * -1
    with PostgresLock(key, pg_dsn) as lk:
        assert lk.key == key
        lk.acquire()
        assert pg_server.psql(f"SELECT pg_try_advisory_lock({key})") == "f"
        lk.release()
        assert pg_server.psql(f"SELECT pg_try_advisory_lock({key})") == "t"


def test_name_is_hashed_as_sql_does(pg_server: Pg, pg_dsn: str, name: str) -> None:
    """A name's key is hashtextextended(name, 0), so a psql script can take it."""
    with PostgresLock(name, pg_dsn) as lk:
        assert lk.key == int(pg_server.psql(f"SELECT {key_sql(name)}"))
        assert lk.url.endswith(f"#{name}") and lk.url.startswith("postgresql://postgres@")


def test_psql_session_and_postgreslock_exclude_each_other(
    pg_server: Pg, pg_dsn: str, name: str
) -> None:
    """A psql session holding pg_advisory_lock() on the name's key keeps us out
    until it ends; then we hold it, and psql's try fails."""
    script = f"SELECT pg_advisory_lock({key_sql(name)}); SELECT pg_sleep(0.6);"
    args = ["psql", "-X", "-q", "-d", pg_dsn, "-c", script]
    with PostgresLock(name, pg_dsn) as lk:
        psql = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: lk.holders(), timeout=10)
            start = time.monotonic()
            lk.acquire(timeout=10)
            waited = time.monotonic() - start
        finally:
            psql.wait(10)
        assert 0.2 < waited < 5
        assert pg_server.psql(f"SELECT pg_try_advisory_lock({key_sql(name)})") == "f"
        lk.release()


# ---- deadlines and cancels --------------------------------------------------------


def test_timeout_ends_the_wait_at_the_deadline(locks: list[PostgresLock]) -> None:
    """timeout=0.3 on a held lock: LockTimeout after about 0.3 s, naming the lock."""
    a, b = locks
    a.acquire()
    start = time.monotonic()
    with pytest.raises(LockTimeout) as caught:
        b.acquire(timeout=0.3)
    waited = time.monotonic() - start
    assert 0.29 <= waited < 1.0
    assert caught.value.path == b.url and b.url in str(caught.value)
    with pytest.raises(LockTimeout):
        b.acquire(timeout=0)  # one try
    a.release()
    b.acquire(timeout=0)


def test_cancel_from_another_thread_ends_the_wait_at_once(locks: list[PostgresLock]) -> None:
    """ctx.cancel() in another thread: the wait ends with LockCancelled, without
    waiting for any timer (the wait has no deadline)."""
    a, b = locks
    a.acquire()
    ctx = Context.with_cancel()
    timer = threading.Timer(0.3, ctx.cancel)
    timer.start()
    start = time.monotonic()
    with pytest.raises(LockCancelled):
        b.acquire(ctx=ctx)
    ended = time.monotonic() - start
    assert 0.29 <= ended < 0.8
    a.release()
    b.acquire(timeout=1)  # the waiter's pool is usable
    b.release()


def test_context_deadline_and_done_context(locks: list[PostgresLock]) -> None:
    """A context's deadline ends the wait; a cancelled context fails at once,
    even on a free lock."""
    a, b = locks
    a.acquire()
    with pytest.raises(LockTimeout):
        b.acquire(ctx=Context.with_timeout(0.2))
    ctx = Context.with_cancel()
    ctx.cancel()
    a.release()
    with pytest.raises(LockCancelled):
        b.acquire(ctx=ctx)


def test_close_ends_a_wait_in_another_thread(pg_dsn: str, locks: list[PostgresLock]) -> None:
    """close() ends another thread's wait with LockError at once."""
    a, b = locks
    a.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            b.acquire()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    b.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and type(errors[0]) is LockError and "closed" in str(errors[0])
    a.release()


def test_interrupt_in_the_main_thread_ends_the_servers_wait_too(pg_dsn: str, name: str) -> None:
    """Ctrl-C during a wait: KeyboardInterrupt, no session left waiting on the
    server, and the lock can be taken again afterwards."""
    proc = run_program("pg_interrupted", pg_dsn, name)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("interrupted after 0.")
    assert lines[1:] == ["waiting on the server: 0", "then granted"]


def test_asyncio_task_cancel_and_timeout_end_the_wait(locks: list[PostgresLock]) -> None:
    """task.cancel() and asyncio.wait_for() end a task's wait at once; the event
    loop keeps running meanwhile; lock_async and with_lock_async work."""
    a, b = locks
    a.acquire()

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        task = asyncio.create_task(b.acquire_async())
        await asyncio.sleep(0.3)
        task.cancel()
        start = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - start < 0.1
        assert ticks >= 10  # the loop ran while the task waited
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.acquire_async(), 0.2)
        if sys.version_info >= (3, 11):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await b.acquire_async()
            assert time.monotonic() - start < 0.5
        with pytest.raises(LockTimeout):
            await b.acquire_async(timeout=0.2)
        a.release()  # held by this thread (a has served no task)
        async with b.lock_async(timeout=5):
            assert b.locked()

        async def work() -> int:
            return 7

        assert await b.with_lock_async(work, SHARED, timeout=5) == 7
        assert not b.locked()
        tick.cancel()

    asyncio.run(main())


def test_trio_cancel_scope_ends_the_servers_wait(pg_server: Pg, locks: list[PostgresLock]) -> None:
    """Under trio (through anyio): a cancel scope ends a task's wait on the server
    at once, leaving no session waiting there; the loop keeps running meanwhile;
    lock_async and with_lock_async take and give back the lock through the
    server, whose round trips run in touchfile's threads."""
    import anyio
    import trio

    a, b = locks
    a.acquire()

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            start = time.monotonic()
            with trio.move_on_after(0.3):
                await b.acquire_async()
            assert 0.3 <= time.monotonic() - start < 0.4  # ended at the scope's deadline
            assert ticks >= 10  # the loop ran while the task waited
            assert not b.locked()
            with anyio.fail_after(5):
                while [s for s in ours(pg_server) if s[1] == "active"]:
                    await trio.sleep(0.01)  # the server's wait is over
            with pytest.raises(LockTimeout):
                await b.acquire_async(timeout=0.2)
            a.release()
            async with b.lock_async(timeout=5):
                assert b.locked()
                with pytest.raises(LockTimeout):
                    a.acquire(timeout=0)

            async def work() -> int:
                return 7

            assert await b.with_lock_async(work, SHARED, timeout=5) == 7
            assert not b.locked()
            a.acquire(timeout=5)  # given back on the server
            a.release()
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---- faults -----------------------------------------------------------------------


def test_killed_holder_frees_the_lock_for_a_waiter_within_100_ms(
    pg_server: Pg, pg_dsn: str, name: str, holders: list[Holder]
) -> None:
    """SIGKILL the holder's process: its session ends, and a blocked waiter
    has the lock within 100 ms."""
    holder = hold(holders, pg_server.url(name), tool="postgres")
    with PostgresLock(name, pg_dsn) as lk:
        granted: list[float] = []

        def wait() -> None:
            lk.acquire(timeout=10)
            granted.append(time.monotonic())
            lk.release()

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.3)
        killed = time.monotonic()
        holder.proc.send_signal(signal.SIGKILL)
        thread.join(10)
        assert granted and granted[0] - killed < 0.1


def test_fork_child_closing_its_copy_keeps_the_parents_lock(pg_dsn: str, name: str) -> None:
    """After fork(), the child's close() never ends the parent's session."""
    proc = run_program("pg_fork", pg_dsn, name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child 0", "parent still holds the lock", "released"]


def test_restart_between_holds_reconnects(pg_server: Pg, pg_dsn: str, name: str) -> None:
    """A pooled connection that a server restart ended is replaced at the next acquire."""
    if not isinstance(pg_server, Server):
        pytest.skip("restarts only the suite's own server")
    with PostgresLock(name, pg_dsn) as lk:
        lk.acquire()
        lk.release()
        pg_server.restart("fast")
        lk.acquire(timeout=5)
        lk.release()


# ---- the pool ---------------------------------------------------------------------


def test_pooled_connections_hold_nothing_after_timeout_cancel_and_error(
    pg_server: Pg, locks: list[PostgresLock]
) -> None:
    """After a timeout, a cancel, an exception in the block and a release, no
    session of ours holds or awaits a lock but the holder's; connections are
    reused; close() ends every session."""
    a, b = locks
    a.acquire()
    with pytest.raises(LockTimeout):
        b.acquire(timeout=0.1)
    ctx = Context.with_cancel()
    threading.Timer(0.1, ctx.cancel).start()
    with pytest.raises(LockCancelled):
        b.acquire(ctx=ctx)
    a.release()
    with pytest.raises(ZeroDivisionError), b.lock():
        1 / 0  # noqa: B018
    for _ in range(20):
        with b.lock(timeout=1):
            pass
        with a.shared_lock(timeout=1):
            pass
    pids = [pid for pid, _ in ours(pg_server)]
    assert advisory_locks(pg_server, pids) == 0
    assert len(pids) == 2  # one pooled session per object: reused
    a.close()
    b.close()
    assert ours(pg_server) == []


def test_a_grant_racing_lock_timeout_leaves_no_lock_held(
    pg_server: Pg, pg_dsn: str, name: str
) -> None:
    """The server may grant the lock just as lock_timeout ends the statement:
    it still sends the timeout error, and a session-level advisory lock
    survives that. LockTimeout must then leave nothing held: 300 waits of
    3 ms, each released by the holder at a random point around its deadline
    (before the fix, about 4 in 10 of those that timed out kept the lock)."""
    holder = psycopg.connect(pg_dsn, autocommit=True)
    b = PostgresLock(name, pg_dsn)
    timed_out = 0
    try:
        release = f"SELECT pg_advisory_unlock({key_sql(name)})"
        for _ in range(300):
            holder.execute(f"SELECT pg_advisory_lock({key_sql(name)})")
            releaser = threading.Timer(
                0.003 + random.uniform(-0.0004, 0.0002), lambda: holder.execute(release)
            )
            releaser.start()
            try:
                b.acquire(timeout=0.003)
                b.release()
            except LockTimeout:
                timed_out += 1
            releaser.join()
            got = holder.execute(f"SELECT pg_try_advisory_lock({key_sql(name)})").fetchone()
            assert got == (True,), "a session of b's kept the lock after LockTimeout"
            holder.execute(release)
        assert timed_out >= 30  # the race was run
    finally:
        b.close()
        holder.close()


def test_an_unclosed_postgres_lock_warns_and_ends_its_sessions(
    pg_server: Pg, pg_dsn: str, name: str
) -> None:
    """Dropped without close(): ResourceWarning, and its sessions end (the
    lock it held with them), as close() would have done."""
    lk = PostgresLock(name, pg_dsn)
    lk.acquire()
    assert ours(pg_server) != []
    with pytest.warns(ResourceWarning, match=f"unclosed PostgresLock '.*#{name}'"):
        del lk
    wait_until(lambda: ours(pg_server) == [])
    with PostgresLock(name, pg_dsn) as other:
        other.acquire(timeout=0)
        other.release()


# ---- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "words"),
    [
        ("host=127.0.0.1 port=1 dbname=app", ["host 127.0.0.1 port 1, database app", "refused"]),
        ("host=nosuch.invalid dbname=app", ["host nosuch.invalid", "database app", "resolve"]),
        ("postgresql://u@%2Fnonexistent:5/x", ["host /nonexistent port 5, database x"]),
    ],
)
def test_unreachable_server_is_one_line_naming_host_and_database(
    dsn: str, words: list[str]
) -> None:
    """A server that cannot be reached: ConnectionError, one line, host and database."""
    with pytest.raises(ConnectionError) as caught:
        PostgresLock("x", dsn)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("cannot connect to PostgreSQL (")
    for word in words:
        assert word in message


def test_missing_database_and_bad_dsn(pg_server: Pg) -> None:
    """A database that does not exist is a ConnectionError naming it; a DSN
    that does not parse is a ValueError; bad names are refused."""
    if not isinstance(pg_server, Server):
        pytest.skip("builds DSNs for the suite's own server")
    dsn = f"host={pg_server.host} port={pg_server.port} user=postgres dbname=nosuchdb"
    with pytest.raises(ConnectionError, match='database "nosuchdb" does not exist'):
        PostgresLock("x", dsn)
    with pytest.raises(ValueError, match="bad PostgreSQL DSN"):
        PostgresLock("x", "host")
    for bad, error in [("", ValueError), ("a\0b", ValueError), (True, TypeError), (1.5, TypeError),
                       (2**63, ValueError), (-(2**63) - 1, ValueError)]:  # fmt: skip
        with pytest.raises(error):
            PostgresLock(bad, pg_server.dsn)  # type: ignore[arg-type]


def test_misuse_is_lockerror(locks: list[PostgresLock]) -> None:
    """Taking a held lock again, releasing one not held, and using a closed
    object are LockErrors; with_lock and locked() behave as TouchFile's."""
    a, _ = locks
    with pytest.raises(LockError, match="holds no lock"):
        a.release()
    a.acquire()
    assert a.locked()
    with pytest.raises(LockError, match="already holds"):
        a.acquire(timeout=0)
    a.release()
    assert a.with_lock(lambda: 5, SHARED, timeout=1) == 5
    with a.exclusive_lock(timeout=1):
        assert a.locked()
    a.close()
    a.close()
    assert a.closed and "closed" in repr(a)
    with pytest.raises(LockError, match="closed"):
        a.acquire()


def test_import_says_which_extra_to_install() -> None:
    """Without psycopg, importing touchfile.postgres says to install the
    postgres extra; importing touchfile alone never imports psycopg."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import touchfile; assert 'psycopg' not in sys.modules or sys.modules['psycopg'] is None\n"
        "try:\n    import touchfile.postgres\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == (
        "touchfile.postgres needs psycopg 3: pip install 'touchfile[postgres]'"
    ), out.stderr
    plain = "import sys, touchfile; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "False"


# ---- holders ------------------------------------------------------------------


def test_holders_name_session_kind_client_and_program(
    pg_server: Pg, pg_dsn: str, name: str, locks: list[PostgresLock]
) -> None:
    """holders(): the holding sessions' server pids, kinds, clients and
    application names, which name our host, pid and program."""
    a, b = locks
    assert a.holders() == []
    a.acquire(SHARED)
    b.acquire(SHARED)
    found = a.holders()
    assert len(found) == 2 and all(isinstance(h, PostgresHolder) for h in found)
    assert {h.kind for h in found} == {SHARED}
    assert {h.pid for h in found} <= {pid for pid, _ in ours(pg_server)}
    for h in found:
        assert h.client == "local"  # the suite's server is reached over its socket
        assert h.application is not None
        assert f" pid {os.getpid()} on {os.uname().nodename}" in h.application
    a.release()
    b.release()
    b.acquire()
    (only,) = a.holders()
    assert only.kind.value == "exclusive" and only.command.endswith(" from local")
    b.release()


def test_writer_is_not_starved_by_new_readers(pg_dsn: str, name: str) -> None:
    """The server queues requests: with a shared holder and an exclusive waiter,
    a new shared request waits behind the writer (flock() would let it in)."""
    reader, writer, late = (PostgresLock(name, pg_dsn) for _ in range(3))
    try:
        reader.acquire(SHARED)

        def write() -> None:
            writer.acquire(timeout=10)
            writer.release()

        thread = threading.Thread(target=write)
        thread.start()
        wait_until(lambda: waiting_for(pg_dsn) == 1, timeout=5)
        with pytest.raises(LockTimeout):
            late.acquire(SHARED, timeout=0.3)
        reader.release()
        thread.join(10)
        late.acquire(SHARED, timeout=1)
        late.release()
    finally:
        for lk in (reader, writer, late):
            lk.close()


def waiting_for(dsn: str) -> int:
    """How many advisory lock requests wait on the server now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return int(row[0]) if row else 0


def test_over_tcp_holders_show_the_client_address(pg_server: Pg, name: str) -> None:
    """Over TCP, holders() gives the holding session's client address and port."""
    if not isinstance(pg_server, Server):
        pytest.skip("an external server's DSN may not be TCP")
    with PostgresLock(name, pg_server.tcp_dsn) as lk:
        lk.acquire()
        (holder,) = lk.holders()
        assert holder.client is not None and holder.client.startswith("127.0.0.1:")
        port = int(holder.client.rpartition(":")[2])
        assert 0 < port < 65536
        lk.release()


# ---- faults the server side can bring -------------------------------------------


def _stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a server process (the server is silent, the kernel still answers)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


stopped = contextlib.contextmanager(_stopped)


def _waiting_backend(pg: Pg) -> int:
    """The server pid of the one session waiting for an advisory lock."""
    out = pg.psql("SELECT pid FROM pg_stat_activity WHERE wait_event = 'advisory'")
    (pid,) = out.split()
    return int(pid)


def test_silent_server_ends_a_try_at_the_deadline_and_grace(
    pg_server: Pg, locks: list[PostgresLock]
) -> None:
    """A server process that stops answering a try: the try gives up GRACE
    seconds after the deadline (LockTimeout); the next acquire has a new session."""
    if not isinstance(pg_server, Server):
        pytest.skip("stops a process of the suite's own server")
    _, b = locks
    (idle,) = b._locks.idle
    with stopped(idle.pgconn.backend_pid):
        start = time.monotonic()
        with pytest.raises(LockTimeout):
            b.acquire(timeout=0.3)
        waited = time.monotonic() - start
    assert 0.3 + GRACE - 0.1 < waited < 0.3 + GRACE + 1.5
    b.acquire(timeout=5)
    b.release()


@pytest.mark.parametrize("end", ["deadline", "cancel"])
def test_silent_server_ends_a_wait_grace_after_its_deadline_or_cancel(
    pg_server: Pg, locks: list[PostgresLock], end: str
) -> None:
    """A waiting server process that stops answering: the wait ends GRACE
    seconds after its deadline (LockTimeout) or its cancel (LockCancelled),
    once, never twice the grace."""
    if not isinstance(pg_server, Server):
        pytest.skip("stops a process of the suite's own server")
    a, b = locks
    a.acquire()
    errors: list[BaseException] = []
    ctx = Context.with_cancel()
    timeout = 0.5 if end == "deadline" else None

    def wait() -> None:
        try:
            b.acquire(timeout=timeout, ctx=ctx)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=wait)
    start = time.monotonic()
    thread.start()
    wait_until(lambda: "advisory" in pg_server.psql("SELECT wait_event FROM pg_stat_activity"))
    with stopped(_waiting_backend(pg_server)):
        if end == "cancel":
            time.sleep(0.5 - (time.monotonic() - start))
            ctx.cancel()
        thread.join(10)
        ended = time.monotonic() - start
    assert len(errors) == 1
    assert type(errors[0]) is (LockTimeout if end == "deadline" else LockCancelled)
    assert 0.5 + GRACE - 0.1 < ended < 0.5 + GRACE + 1.5
    a.release()
    b.acquire(timeout=5)
    b.release()


def test_deadline_beyond_lock_timeouts_range(locks: list[PostgresLock]) -> None:
    """A timeout of 30 days (beyond lock_timeout's 24.8) waits, and a cancel ends it."""
    a, b = locks
    a.acquire()
    ctx = Context.with_cancel()
    threading.Timer(0.3, ctx.cancel).start()
    with pytest.raises(LockCancelled):
        b.acquire(timeout=30 * 86400, ctx=ctx)
    a.release()


def test_fork_while_another_thread_looks_for_holders(pg_dsn: str, name: str) -> None:
    """A child forked while a thread of the parent is inside holders() closes
    its copy at once (no mutex left held, no session of the parent's ended)."""
    proc = run_program("pg_fork_holders", pg_dsn, name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["children: [0]", "holders: 1"]


def test_name_key_does_not_depend_on_the_client_encoding(pg_server: Pg) -> None:
    """In a LATIN1 database, 'café' is the same lock whatever PGCLIENTENCODING
    the client has, and the same as psql's hashtextextended('café', 0)."""
    if not isinstance(pg_server, Server):
        pytest.skip("creates a database on the suite's own server")
    db = f"latin1_{uuid.uuid4().hex[:8]}"
    pg_server.psql(
        f"CREATE DATABASE {db} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )
    dsn = f"host={pg_server.host} port={pg_server.port} user=postgres dbname={db}"
    code = (
        "import sys; from touchfile.postgres import PostgresLock; "
        "print(PostgresLock('café', sys.argv[1]).key)"
    )
    keys = set()
    for encoding in ("LATIN1", "UTF8", "SQL_ASCII"):
        env = {**os.environ, "PGCLIENTENCODING": encoding}
        out = subprocess.run(
            [sys.executable, "-c", code, dsn], capture_output=True, text=True, env=env, cwd="/"
        )
        assert out.returncode == 0, out.stderr
        keys.add(int(out.stdout))
    psql = subprocess.run(
        ["psql", "-X", "-A", "-t", "-d", dsn, "-c", "SELECT hashtextextended('café', 0)"],
        capture_output=True, text=True, env={**os.environ, "PGCLIENTENCODING": "UTF8"},
    )  # fmt: skip
    assert keys == {int(psql.stdout)}


@pytest.mark.parametrize(
    ("role", "create"),
    [("touchfile_nologin", "CREATE ROLE touchfile_nologin NOLOGIN"), ("touchfile_nobody", "")],
)
def test_refused_role_is_permissionerror(pg_server: Pg, role: str, create: str) -> None:
    """A role that may not log in, or does not exist: PermissionError, one line."""
    if not isinstance(pg_server, Server):
        pytest.skip("creates roles on the suite's own server")
    if create:
        pg_server.psql(f"DROP ROLE IF EXISTS {role}; {create}")
    dsn = f"host={pg_server.host} port={pg_server.port} user={role} dbname=postgres"
    with pytest.raises(PermissionError) as caught:
        PostgresLock("x", dsn)
    assert "\n" not in str(caught.value) and f'"{role}"' in str(caught.value)


def test_password_is_never_shown() -> None:
    """A DSN's password appears in no error message."""
    for dsn in (
        "postgresql://u:S3cretPW@127.0.0.1:1/db",
        "host=127.0.0.1 port=1 password=S3cretPW",
        "postgresql://u:S3cr%zzetPW@127.0.0.1:1/db",
        "postgresql://u:S3cretPW@[::1/db",
    ):
        with pytest.raises((OSError, ValueError)) as caught:
            PostgresLock("x", dsn)
        assert "S3cr" not in str(caught.value), str(caught.value)
