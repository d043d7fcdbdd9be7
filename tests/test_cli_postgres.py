"""The command with a lock on PostgreSQL (postgresql://...#NAME): every option
as for a file, its exit statuses, --holders, and the lock ending with
touchfile's session."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
from helpers import TOUCHFILE, Holder, hold, wait_until
from pgserver import External, Server

from touchfile.postgres import PostgresLock

Pg = Server | External


@pytest.fixture
def url(pg_server: Pg) -> str:
    """The URL of a lock no other test uses."""
    return pg_server.url(f"cli-{uuid.uuid4()}")


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOUCHFILE, *args], capture_output=True, text=True, timeout=timeout, cwd="/"
    )


def held(pg: Pg, url: str) -> bool:
    """Does a session hold the lock URL names now (asked through psql)?"""
    name = url.partition("#")[2]
    free = pg.psql(
        f"SELECT pg_try_advisory_lock(hashtextextended('{name}', 0)), pg_advisory_unlock_all()"
    )
    return free.split("|")[0] == "f"


def test_command_runs_holding_the_lock(pg_server: Pg, url: str) -> None:
    """The command runs while touchfile's session holds the lock; the lock ends with it."""
    name = url.partition("#")[2]
    sql = f"SELECT pg_try_advisory_lock(hashtextextended('{name}', 0))"
    check = f"psql -X -A -t -d '{pg_server.dsn}' -c \"{sql}\""
    proc = run(url, "-c", check)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "f"  # held (by touchfile) while the command ran
    assert not held(pg_server, url)
    proc = run(url, "--", "sh", "-c", "exit 7")
    assert proc.returncode == 7 and proc.stderr == ""


def test_busy_lock_exit_statuses(url: str, holders: list[Holder]) -> None:
    """-n and -w on a busy lock: exit 1, or -E's code; nothing runs."""
    hold(holders, url, tool="postgres")
    assert run("-n", url, "echo", "ran").returncode == 1
    proc = run("-n", "-E", "75", url, "echo", "ran")
    assert (proc.returncode, proc.stdout) == (75, "")
    start = time.monotonic()
    assert run("-w", "0.3", url, "echo", "ran").returncode == 1
    assert 0.3 <= time.monotonic() - start < 5
    assert run("-s", "-n", url, "true").returncode == 1  # shared beside exclusive


def test_shared_beside_shared(url: str, holders: list[Holder]) -> None:
    """-s runs beside a shared holder, -x does not; -o changes nothing for a session's lock."""
    hold(holders, url, kind="shared", tool="postgres")
    assert run("-s", "-n", "-o", url, "true").returncode == 0
    assert run("-x", "-n", url, "true").returncode == 1


def test_waiter_runs_once_the_holder_releases(url: str, holders: list[Holder]) -> None:
    """A blocked touchfile starts its command once the lock is released, and
    -v says who held it."""
    holder = hold(holders, url, tool="postgres")
    proc = subprocess.Popen(
        [TOUCHFILE, "-v", url, "echo", "ran"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    holder.release()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.fullmatch(
        r"touchfile: getting lock took 1\.\d{6} seconds\ntouchfile: executing echo\nran\n", out
    )
    assert "waiting 1." in err and "held by pid " in err and "(exclusive)" in err
    assert f"pid {holder.proc.pid} on " in err  # the holder's application_name
    assert err.count("\n") == 1  # that line only: no traceback from the teller


def test_holders_lists_the_sessions(url: str, holders: list[Holder]) -> None:
    """--holders URL#NAME: the holding sessions' pids, kinds and who they are."""
    assert run("--holders", url).stdout.startswith("no process holds a lock on postgresql://")
    holder = hold(holders, url, kind="shared", tool="postgres")
    proc = run("--holders", url)
    assert proc.returncode == 0, proc.stderr
    header, line = proc.stdout.splitlines()
    assert header.split() == ["PID", "KIND", "COMMAND"]
    assert line.split()[1] == "shared"
    assert f"pid {holder.proc.pid} on " in line and line.endswith(" from local")


def test_killed_touchfile_takes_the_lock_with_it(pg_server: Pg, url: str) -> None:
    """SIGKILL touchfile while its command runs: the session ends, and the lock
    with it, although the command still runs (unlike a file lock)."""
    proc = subprocess.Popen([TOUCHFILE, url, "sleep", "30"], start_new_session=True)
    try:
        wait_until(lambda: held(pg_server, url), timeout=10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not held(pg_server, url), timeout=2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sleep
        proc.wait(10)


def test_stop_signal_ends_the_wait(url: str, holders: list[Holder]) -> None:
    """SIGTERM while waiting: touchfile dies of it, nothing ran, and the lock can be
    taken after."""
    holder = hold(holders, url, tool="postgres")
    proc = subprocess.Popen([TOUCHFILE, url, "echo", "ran"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (-signal.SIGTERM, "")
    holder.release()
    assert run("-w", "5", url, "true").returncode == 0


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["postgresql://u@127.0.0.1:1/app#x", "true"], 69, ["host 127.0.0.1 port 1, database app"]),
        (["postgres://u@nosuch.invalid/app#x", "true"], 69, ["host nosuch.invalid", "resolve"]),
        (["postgresql://u@127.0.0.1:1/app", "true"], 64, ["no lock name in"]),
        (["--holders", "postgresql://u@127.0.0.1:1/app#x"], 69, ["cannot connect"]),
        (["-F", "postgresql://u@127.0.0.1:1/app#x", "true"], 64, ["-F does not apply"]),
        (["--fcntl", "postgresql://u@127.0.0.1:1/app#x", "true"], 64, ["--fcntl does not"]),
        (["--start=1", "postgres://u@127.0.0.1:1/app#x", "true"], 64, ["--fcntl does not"]),
        (["-u", "postgresql://u@127.0.0.1:1/app#x", "true"], 64, ["-u does not apply"]),
    ],
)
def test_bad_urls_are_one_line(args: list[str], status: int, words: list[str]) -> None:
    """A server that cannot be reached, or a URL without #NAME: one line, a
    sysexits status, no traceback."""
    proc = run(*args)
    assert proc.returncode == status
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("touchfile: "), proc.stderr
    for word in words:
        assert word in proc.stderr


def test_no_password_in_messages() -> None:
    """The command never prints a URL's password."""
    for url in (
        "postgresql://u:S3cretPW@127.0.0.1:1/db",
        "postgresql://u:S3cretPW@127.0.0.1:1/d#x",
    ):
        proc = run(url, "true")
        assert proc.returncode in (64, 69) and "S3cr" not in proc.stderr, proc.stderr
        assert "u:***@" in proc.stderr or "cannot connect" in proc.stderr


def test_refused_role_exits_77(pg_server: Pg) -> None:
    """A role the server refuses (not permitted to log in): exit 77, one line."""
    if not isinstance(pg_server, Server):
        pytest.skip("creates a role on the suite's own server")
    role = "touchfile_cli_nologin"
    pg_server.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} NOLOGIN")
    url = pg_server.url("x", tcp=True).replace("postgres@", f"{role}@")
    proc = run(url, "true")
    assert proc.returncode == 77 and "not permitted to log in" in proc.stderr, proc.stderr


def test_verbose_wait_on_a_terminal_keeps_its_place_in_the_queue(
    pg_server: Pg, pg_dsn: str, url: str, holders: list[Holder]
) -> None:
    """-v on a terminal tells the status every 0.5 s without leaving the
    server's queue: a waiter that queued after it is granted after it."""
    holder = hold(holders, url, tool="postgres")
    primary, secondary = pty.openpty()
    waiter = subprocess.Popen(
        [TOUCHFILE, "-v", url, "sh", "-c", "echo ran; sleep 1"],
        stdout=subprocess.PIPE, stderr=secondary, text=True,
    )  # fmt: skip
    os.close(secondary)
    later: list[float] = []
    try:
        time.sleep(1.2)  # touchfile's status went out at 1.0 s

        def queue_later() -> None:
            with PostgresLock(url.partition("#")[2], pg_dsn) as lk:
                lk.acquire(timeout=20)
                later.append(time.monotonic())
                lk.release()

        thread = threading.Thread(target=queue_later)
        thread.start()
        time.sleep(1.5)  # three status lines: slices would have re-queued behind it
        holder.release()
        assert waiter.stdout is not None
        assert waiter.stdout.readline().startswith("touchfile: getting lock took ")
        assert waiter.stdout.readline() == "touchfile: executing sh\n"
        assert waiter.stdout.readline() == "ran\n"
        ran = time.monotonic()
        thread.join(20)
        assert waiter.wait(20) == 0
        assert later and later[0] > ran  # granted after touchfile's command ran
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        if waiter.stdout is not None:
            waiter.stdout.close()
        os.close(primary)
