"""Locks that are lost while held: held_context(), LockLost and fencing tokens,
under a terminated session, a server restart, a stopped holder, and the command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import stress_pg
from helpers import TOUCHFILE, Holder, hold, program, run_program, wait_until
from netns import Hosts
from pgserver import External, Server

from touchfile import LockError, LockLost, LockTimeout, TouchFile
from touchfile.postgres import PostgresLock

Pg = Server | External


@pytest.fixture
def name() -> str:
    return f"lost-{uuid.uuid4()}"


@pytest.fixture
def own_server(pg_server: Pg) -> Server:
    if not isinstance(pg_server, Server):
        pytest.skip("terminates sessions of, and restarts, the suite's own server")
    return pg_server


def session_of(lk: PostgresLock) -> int:
    """The server pid of the session through which this thread holds lk."""
    handle = lk._locks.held[threading.get_ident()]
    pid: int = handle.pgconn.backend_pid
    return pid


def terminate(dsn: str, pid: int) -> float:
    """pg_terminate_backend(pid); the time.monotonic() when it returned."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return time.monotonic()


def test_file_lock_held_context_ends_on_release(lock_path: str) -> None:
    """A TouchFile's held context: live while held, cancelled by release();
    each hold has its own; none without a hold."""
    with TouchFile(lock_path) as tf:
        with pytest.raises(LockError, match="holds no lock"):
            tf.held_context()
        tf.acquire()
        ctx = tf.held_context()
        assert tf.held_context() is ctx and not ctx.cancelled
        tf.release()
        assert ctx.cancelled
        with tf.lock():
            again = tf.held_context()
            assert again is not ctx and not again.cancelled
        assert again.cancelled


def test_terminated_holder_learns_within_100_ms(own_server: Server, name: str) -> None:
    """pg_terminate_backend() of a holder's session: its held context ends
    within 100 ms, a waiter takes the lock, and release() raises LockLost."""
    dsn = own_server.dsn
    with PostgresLock(name, dsn) as a, PostgresLock(name, dsn) as b:
        a.acquire()
        ctx = a.held_context()
        got: list[float] = []

        def wait() -> None:
            b.acquire(timeout=10)
            got.append(time.monotonic())
            b.release()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        assert not got and not ctx.cancelled
        ended = terminate(dsn, session_of(a))
        wait_until(lambda: ctx.cancelled, timeout=5)
        learned = time.monotonic() - ended
        waiter.join(10)
        assert got
        assert learned < 0.1, f"the holder learned {learned * 1000:.0f} ms after"
        with pytest.raises(LockLost, match="was lost while held"):
            a.release()
        with pytest.raises(LockError, match="holds no lock"):
            a.release()
        a.acquire(timeout=5)  # a new session
        a.release()


def test_lock_block_raises_lost_on_exit_unless_already_raising(
    own_server: Server, name: str
) -> None:
    """with lk.lock(): a lost hold raises LockLost on exit, but never hides
    the block's own exception."""
    dsn = own_server.dsn
    with PostgresLock(name, dsn) as lk:
        with pytest.raises(LockLost), lk.lock():
            terminate(dsn, session_of(lk))
            wait_until(lambda: lk.held_context().cancelled)
        with pytest.raises(ZeroDivisionError), lk.lock():
            terminate(dsn, session_of(lk))
            wait_until(lambda: lk.held_context().cancelled)
            1 / 0  # noqa: B018
        assert not lk.locked()


def test_restart_holders_learn_waiters_wait_on(own_server: Server, name: str) -> None:
    """pg_ctl restart -m fast: the holder learns it lost; a waiter keeps
    waiting across the restart (reconnecting) and then takes the lock."""
    dsn = own_server.dsn
    with PostgresLock(name, dsn) as a, PostgresLock(name, dsn) as b:
        a.acquire()
        ctx = a.held_context()
        result: list[object] = []

        def wait() -> None:
            try:
                b.acquire(timeout=30)
                result.append(time.monotonic())
                b.release()
            except BaseException as error:
                result.append(error)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        own_server.restart("fast")
        restarted = time.monotonic()
        waiter.join(30)
        assert ctx.cancelled
        assert len(result) == 1 and isinstance(result[0], float), result
        assert result[0] - restarted < 5
        with pytest.raises(LockLost):
            a.release()


def test_server_down_does_not_fail_a_wait_before_its_deadline(
    own_server: Server, name: str
) -> None:
    """The server goes down as a wait blocks: the wait reconnects, backing
    off, until its deadline (LockTimeout then, not a ConnectionError)."""
    dsn = own_server.dsn
    with PostgresLock(name, dsn) as holder, PostgresLock(name, dsn) as lk:
        holder.acquire()
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                lk.acquire(timeout=1.5)
            except BaseException as error:
                errors.append(error)

        start = time.monotonic()
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        own_server.down()
        try:
            waiter.join(10)
            ended = time.monotonic() - start
        finally:
            own_server.up()
        assert len(errors) == 1 and type(errors[0]) is LockTimeout, errors
        assert 1.45 < ended < 3
        with pytest.raises(LockLost):
            holder.release()


def test_stopped_holder_keeps_its_lock(
    pg_server: Pg, pg_dsn: str, name: str, holders: list[Holder]
) -> None:
    """A holder SIGSTOPped for 3 s still holds its lock after SIGCONT: a
    session that is only slow is not lost (its release works)."""
    holder = hold(holders, pg_server.url(name), tool="postgres")
    holder.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(3)
        with PostgresLock(name, pg_dsn) as probe, pytest.raises(LockTimeout):
            probe.acquire(timeout=0.1)
    finally:
        holder.proc.send_signal(signal.SIGCONT)
    holder.release()  # a LockLost in the holder would end it without a time


def test_fencing_tokens_increase_across_objects_and_restarts(own_server: Server, name: str) -> None:
    """Each exclusive hold that asks gets a token above every earlier one,
    from any object, after a restart too; a shared hold has none."""
    dsn = own_server.dsn
    tokens = []
    with PostgresLock(name, dsn) as a, PostgresLock(name, dsn) as b:
        for lk in (a, b, a):
            with lk.lock():
                tokens.append(lk.fencing_token())
                assert lk.fencing_token() == tokens[-1]  # one per hold
        own_server.restart("fast")
        with b.lock(timeout=5):
            tokens.append(b.fencing_token())
        with a.lock("shared"), pytest.raises(LockError, match="only an exclusive hold"):
            a.fencing_token()
        with pytest.raises(LockError, match="holds no lock"):
            a.fencing_token()
    assert tokens == sorted(set(tokens)) and len(tokens) == 4


def test_fencing_without_privileges_says_what_to_grant(own_server: Server, name: str) -> None:
    """A role that may not use the tokens' table gets a LockError saying what
    to grant, and keeps its lock."""
    with PostgresLock(name, own_server.dsn) as admin, admin.lock():
        admin.fencing_token()  # the table exists
    role = "touchfile_no_tokens"
    own_server.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")
    dsn = f"host={own_server.host} port={own_server.port} user={role} dbname=postgres"
    with PostgresLock(name, dsn) as lk, lk.lock():
        with pytest.raises(LockError) as caught:
            lk.fencing_token()
        message = str(caught.value)
        assert "permission denied" in message and "The lock is held, without a token" in message
        assert f"GRANT SELECT, INSERT, UPDATE ON public.touchfile_fencing TO {role}" in message
        assert lk.locked()


@pytest.mark.parametrize("keep", [False, True])
def test_command_says_lost_and_ends_its_command(own_server: Server, name: str, keep: bool) -> None:
    """The command's lock is lost as its command runs: touchfile says so, sends
    the command SIGTERM (or, with --keep-running, lets it finish), and exits 76."""
    url = own_server.url(name)
    script = "echo ran; sleep 1.5; echo finished" if keep else "echo ran; exec sleep 30"
    args = [TOUCHFILE, *(["--keep-running"] if keep else []), url, "sh", "-c", script]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ran\n"
        app = f"touchfile pid {proc.pid} on %"
        pid = own_server.psql(
            f"SELECT pid FROM pg_stat_activity WHERE application_name LIKE '{app}'"
        )
        start = terminate(own_server.dsn, int(pid))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 76
    assert "lost the lock on postgresql://" in err
    if keep:
        assert "leaving it running" in err and out == "finished\n"
    else:
        assert "sending it SIGTERM" in err and out == ""
        assert time.monotonic() - start < 1.5


def test_partition_cut_off_holder_learns_first_and_its_token_is_refused(tmp_path: Path) -> None:
    """A partition between real hosts (network namespaces; the server on one,
    holders on two others): the holder cut off learns it lost within 15 s,
    before the server drops its session and the other host takes the lock;
    then a late write with the old fencing token is refused by the store."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("the partition test needs root and ip(8) (iproute2)")
        pytest.skip("needs root and ip(8)")
    base = tempfile.mkdtemp(prefix="touchfile-pgnet-")
    os.chmod(base, 0o755)
    store = str(tmp_path / "store")
    name = f"partition-{uuid.uuid4()}"
    procs: list[subprocess.Popen[str]] = []
    with Hosts(2) as hosts:
        server = Server.start(
            base, netns=hosts.server, listen="10.77.1.1,10.77.2.1", trust="10.77.0.0/16"
        )
        try:

            def holder(client: int, label: str) -> subprocess.Popen[str]:
                dsn = (
                    f"host={hosts.server_address(client)} port={server.port} "
                    "user=postgres dbname=postgres"
                )
                argv = [sys.executable, program("pg_partition_holder"), dsn, name, store, label]
                proc = subprocess.Popen(
                    hosts.on(client, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True, cwd="/",
                )  # fmt: skip
                procs.append(proc)
                return proc

            a = holder(1, "A")
            assert a.stdout is not None and a.stdin is not None
            first = a.stdout.readline().split()
            assert first[0] == "locked", first
            b = holder(2, "B")
            assert b.stdout is not None
            time.sleep(0.5)
            hosts.cut(1)
            cut = time.monotonic()
            lost = a.stdout.readline().split()
            assert lost[0] == "lost", lost
            learned = float(lost[1]) - cut
            assert learned < 15, f"the cut-off holder learned after {learned:.1f} s"
            second = b.stdout.readline().split()
            taken = time.monotonic() - cut
            assert second[0] == "locked" and int(second[1]) > int(first[1]), second
            assert taken > learned, "the other host took the lock before the holder learned"
            a.stdin.write("\n")
            a.stdin.flush()
            assert a.stdout.readline().strip() == "late write rejected"
            print(f"cut-off holder learned after {learned:.1f} s; the other host held after "
                  f"{taken:.1f} s")  # fmt: skip
        finally:
            for proc in procs:
                proc.kill()
                proc.communicate()
            server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
def test_chaos_harness_postgres_finds_no_violation(own_server: Server) -> None:
    """30 s of the harness's PostgreSQL mode: kills, pauses, terminations and
    a restart, with no invariant broken (python tests/stress.py --postgres)."""
    report = stress_pg.run(30, workers=3, threads=3, names=2)
    print(report.figures())
    assert report.violations == [], report.figures()
    c = report.counts
    assert c["g"] > 1000 and c["t"] > 0 and c["c"] > 0, report.figures()
    assert c["kill"] > 0 and c["stop"] > 0 and c["term"] > 0 and c["restart"] == 1, report.figures()
    assert c["x"] == 3, report.figures()


def test_loss_found_by_the_holders_own_statement_is_lost_too(own_server: Server, name: str) -> None:
    """Whoever finds the session gone first, the watcher or the holder's own
    fencing_token(), the hold is lost: the token call and release() raise
    LockLost, and the held context ends."""
    dsn = own_server.dsn
    with PostgresLock(name, dsn) as lk:
        for _ in range(5):
            lk.acquire()
            ctx = lk.held_context()
            terminate(dsn, session_of(lk))
            with pytest.raises(LockLost):
                lk.fencing_token()
            assert ctx.cancelled
            with pytest.raises(LockLost):
                lk.release()


def test_first_locks_of_many_threads_share_one_watcher(pg_dsn: str) -> None:
    """16 threads taking their first locks at once in a new process: one
    watcher serves them all, and nothing hangs (run 5 times)."""
    for _ in range(5):
        proc = run_program("pg_first_watch", pg_dsn, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, "done 16\n"), proc.stderr


def test_short_commands_always_end(pg_server: Pg) -> None:
    """The command never loses its command's SIGCHLD to touchfile's own
    threads: 40 short commands in a row each end with their status."""
    url = pg_server.url(f"short-{uuid.uuid4()}")
    for n in range(40):
        proc = subprocess.run([TOUCHFILE, url, "sh", "-c", f"exit {n % 7}"], timeout=20)
        assert proc.returncode == n % 7


def test_async_exit_and_with_lock_after_a_loss(own_server: Server, name: str) -> None:
    """async with lock_async() raises LockLost on exit after a loss; with_lock()
    and with_lock_async() let fn's own exception through instead."""
    dsn = own_server.dsn

    async def main(lk: PostgresLock) -> None:
        with pytest.raises(LockLost):
            async with lk.lock_async(timeout=5):
                terminate(dsn, lk._locks.held[asyncio.current_task()].pgconn.backend_pid)
                wait_until(lambda: lk.held_context().cancelled)

        async def fails() -> None:
            terminate(dsn, lk._locks.held[asyncio.current_task()].pgconn.backend_pid)
            wait_until(lambda: lk.held_context().cancelled)
            raise ValueError("fn's own")

        with pytest.raises(ValueError, match="fn's own"):
            await lk.with_lock_async(fails, timeout=5)

    with PostgresLock(name, dsn) as lk:
        asyncio.run(main(lk))

        def fails_too() -> None:
            terminate(dsn, session_of(lk))
            wait_until(lambda: lk.held_context().cancelled)
            raise ValueError("fn's own")

        with pytest.raises(ValueError, match="fn's own"):
            lk.with_lock(fails_too, timeout=5)
        assert not lk.locked()


def test_killed_waiter_never_holds_and_the_next_waiter_gets_the_lock(
    pg_server: Pg, pg_dsn: str, name: str, holders: list[Holder]
) -> None:
    """A waiter process SIGKILLed in the server's queue never ends up holding
    the lock: when the holder releases, the waiter behind it holds at once."""
    url = pg_server.url(name)
    holder = hold(holders, url, tool="postgres")
    waiter = subprocess.Popen([TOUCHFILE, url, "sleep", "30"], start_new_session=True)
    try:
        wait_until(
            lambda: "advisory" in pg_server.psql("SELECT wait_event FROM pg_stat_activity"),
            timeout=10,
        )
        os.killpg(waiter.pid, signal.SIGKILL)
        waiter.wait(10)
        with PostgresLock(name, pg_dsn) as lk:
            got: list[float] = []

            def wait() -> None:
                lk.acquire(timeout=10)
                got.append(time.monotonic())
                lk.release()

            thread = threading.Thread(target=wait)
            thread.start()
            time.sleep(0.3)
            released = holder.release()
            thread.join(10)
            assert got and got[0] - released < 1.0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(waiter.pid, signal.SIGKILL)
        waiter.wait(10)
