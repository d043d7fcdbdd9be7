"""Faults and bad input: the lock file, its path, the process's resources, the
interrupt signal or the timeout are not what they should be (README: "What happens
when ...")."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import TOUCHFILE, Holders, hold, probe, program, run_program

from touchfile import SHARED, Context, LockCancelled, LockTimeout, TouchFile

NOBODY = 65534


def _change(path: str, how: str) -> None:
    """Delete the file at path, or replace it (atomically) with a new one."""
    if how == "deleted":
        os.unlink(path)
    else:
        Path(path + ".new").touch()
        os.rename(path + ".new", path)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _unprivileged(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tests/programs/NAME.py as root stripped of every capability, so that
    file permissions apply to it (test_cli's permission test does the same)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to drop the capability to override permissions")
    argv = ["setpriv", "--bounding-set=-all", sys.executable, program(name), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")


# ---- the lock file deleted or replaced ----------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_deleted_or_replaced_while_held(lock_path: str, how: str) -> None:
    """A held lock file deleted or replaced: the holder keeps its lock on the old
    inode, and a newcomer locks the file now at the path beside it (two holders:
    never delete lock files). After releasing, the holder rejoins the path's file."""
    with TouchFile(lock_path) as tf:
        tf.acquire()
        _change(lock_path, how)
        with TouchFile(lock_path) as newcomer:
            newcomer.acquire(timeout=0)  # not kept out: the holder's inode is gone
            assert tf.locked() and newcomer.locked()
            tf.release()
            with pytest.raises(LockTimeout):
                tf.acquire(timeout=0.05)  # the path's file, which the newcomer holds
            newcomer.release()
        with tf.lock(timeout=1):
            assert not probe(lock_path)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_deleted_while_waited_on(lock_path: str, holders: Holders) -> None:
    """The lock file deleted while a thread waits: the waiter, granted the old inode
    when its holder releases, moves to the file now at the path and waits for that
    file's holder; it never holds beside it."""
    holder = hold(holders, lock_path)
    tf = TouchFile(lock_path)
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(tf.acquire, timeout=10)
        time.sleep(0.05)  # blocked on the old inode by now
        os.unlink(lock_path)
        with TouchFile(lock_path) as newcomer:
            newcomer.acquire(timeout=0)  # creates and locks a new file at the path
            holder.release()  # the waiter is granted the old inode, finds it stale
            time.sleep(0.1)
            assert not got.done()  # waiting for the newcomer now
            newcomer.release()
            got.result(timeout=5)
        assert not probe(lock_path)  # the waiter holds the path's file
        pool.submit(tf.release).result(timeout=5)
    tf.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_try_after_deleted_or_replaced(lock_path: str, how: str) -> None:
    """timeout=0 (one try) after the lock file was deleted or replaced between
    acquisitions takes the free lock on the path's file, every time."""
    with TouchFile(lock_path) as tf:
        with tf.lock(timeout=0):
            pass
        _change(lock_path, how)
        for _ in range(2):
            with tf.lock(timeout=0):
                assert not probe(lock_path)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_parent_directory_removed(tmp_path: Path, holders: Holders) -> None:
    """The lock file's directory removed after TouchFile() opened it: a waiter (once
    the holder releases) and every later acquisition raise FileNotFoundError naming
    the path, holding nothing and leaking no descriptor; once the directory is back,
    the file is recreated and locked."""
    directory = tmp_path / "dir"
    directory.mkdir()
    path = str(directory / "x.lock")
    holder = hold(holders, path)
    before = _fd_count()
    tf = TouchFile(path)
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(tf.acquire, timeout=10)
        time.sleep(0.05)
        shutil.rmtree(directory)
        holder.release()
        with pytest.raises(FileNotFoundError, match=r"x\.lock"):
            got.result(timeout=5)
        assert not pool.submit(tf.locked).result()
    with pytest.raises(FileNotFoundError, match=r"x\.lock"):
        tf.acquire(timeout=1)
    assert not tf.locked()
    assert _fd_count() == before
    directory.mkdir()
    with tf.lock(timeout=1):
        assert not probe(path)
    tf.close()
    assert _fd_count() == before


# ---- what the path names ---------------------------------------------------------


def test_fifo_is_a_lock_file(tmp_path: Path) -> None:
    """A FIFO at the path is locked like a file (opened read-only without waiting
    for a writer); the lock excludes others."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with TouchFile(fifo) as tf, tf.lock(timeout=1):
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_read_only_fifo_does_not_hang(tmp_path: Path) -> None:
    """A FIFO the user may only read (someone else's, 0444) is locked read-only at
    once, as a read-only file is: TouchFile() never blocks waiting for a writer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o444)
    os.chown(fifo, NOBODY, NOBODY)
    proc = _unprivileged("read_only_fifo", str(fifo))
    assert proc.stdout == "locked\n", proc.stderr


def test_symlink_locks_its_target(tmp_path: Path) -> None:
    """A symlink is followed: the lock is its target's (tf.path stays the link), and
    a link re-pointed between acquisitions moves the lock to the new target."""
    first, second = tmp_path / "first.lock", tmp_path / "second.lock"
    first.touch()
    second.touch()
    link = tmp_path / "link.lock"
    link.symlink_to(first)
    with TouchFile(link) as tf:
        assert tf.path == str(link)
        with tf.lock(timeout=0):
            assert not probe(first)
        (tmp_path / "new-link").symlink_to(second)
        os.rename(tmp_path / "new-link", link)  # re-pointed atomically
        with tf.lock(timeout=1):
            assert not probe(second) and probe(first)


def test_dangling_symlink(tmp_path: Path) -> None:
    """A dangling symlink's target is created and locked (as open(O_CREAT) and
    flock(1) do); one pointing into a missing directory is FileNotFoundError."""
    link = tmp_path / "link.lock"
    link.symlink_to("target.lock")
    with TouchFile(link) as tf, tf.lock(timeout=0):
        assert (tmp_path / "target.lock").is_file()
        assert not probe(tmp_path / "target.lock")
    nowhere = tmp_path / "nowhere.lock"
    nowhere.symlink_to(tmp_path / "missing" / "x.lock")
    with pytest.raises(FileNotFoundError):
        TouchFile(nowhere)


# ---- permissions and read-only file systems -----------------------------------------


def test_no_permission_unprivileged(tmp_path: Path) -> None:
    """Without privileges: a directory it may not enter, or not write to create the
    file, or a file it may not open at all is PermissionError naming the path;
    someone else's 0644 lock file is locked read-only, and excludes others."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shut = tmp_path / "shut"
    shut.mkdir(mode=0o755)
    theirs, unreadable = shut / "theirs.lock", shut / "unreadable.lock"
    theirs.touch(mode=0o644)
    unreadable.touch(mode=0o000)
    for path in (private, shut, theirs, unreadable):
        os.chown(path, NOBODY, NOBODY)
    paths = [private / "x.lock", shut / "new.lock", theirs, unreadable]
    proc = _unprivileged("open_each", *map(str, paths))
    assert proc.stdout.splitlines() == [
        "PermissionError True",
        "PermissionError True",
        "locked",
        "PermissionError True",
    ], proc.stderr
    assert not (shut / "new.lock").exists()


def test_unreadable_directory_unprivileged(tmp_path: Path) -> None:
    """A directory the user may not read (0311, someone else's) is PermissionError,
    not a misleading IsADirectoryError (directories are valid lock files)."""
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o311)
    os.chown(directory, NOBODY, NOBODY)
    proc = _unprivileged("open_each", str(directory))
    assert proc.stdout == "PermissionError True\n", proc.stderr


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_read_only_file_system(tmp_path: Path, holders: Holders) -> None:
    """On a read-only file system an existing lock file locks (read-only) and waits
    as anywhere; a missing one is OSError(EROFS) naming it, and the command exits 73."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount namespace")
    probe_ns = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe_ns.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe_ns.stderr.strip()}")
    existing, missing = tmp_path / "existing.lock", tmp_path / "missing.lock"
    existing.touch()
    hold(holders, existing, "shared")  # outside the namespace, through the writable mount
    script = (
        'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" || exit 99\n'
        '"$2" "$3" "$1/existing.lock" "$1/missing.lock"\n'
        '"$4" "$1/missing.lock" true; echo "command $?"\n'
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh",
         str(tmp_path), sys.executable, program("read_only_fs"), TOUCHFILE],
        capture_output=True, text=True, timeout=30, cwd="/",
    )  # fmt: skip
    assert proc.stdout.splitlines() == [
        "shared lock taken",
        "exclusive timed out",
        "EROFS True",
        "command 73",
    ], proc.stderr
    assert proc.stderr == f"touchfile: cannot open lock file {missing}: Read-only file system\n"
    assert not missing.exists()


# ---- out of descriptors ----------------------------------------------------------


def test_too_many_open_files(lock_path: str) -> None:
    """Out of descriptors (EMFILE): TouchFile() and an acquire that needs a new
    descriptor raise OSError(EMFILE) naming the path, hold nothing and leak nothing;
    the command exits 71 with one line; once descriptors are free, all works."""
    proc = run_program("emfile", lock_path)
    assert proc.stdout.splitlines() == [
        "new: EMFILE True",
        "thread: EMFILE True False",
        "command: 71",
        "leaked: 0",
        "recovered: True",
    ], proc.stderr
    assert proc.stderr == f"touchfile: cannot open lock file {lock_path}: Too many open files\n"


def test_too_many_open_files_temporary() -> None:
    """TouchFile() (a temporary lock file) out of descriptors says EMFILE, not a
    misleading 'no usable temporary directory'."""
    proc = run_program("emfile_temporary")
    assert proc.stdout == "EMFILE\n", proc.stderr


# ---- the interrupt signal ----------------------------------------------------------


def test_foreign_handler_before_import(lock_path: str, holders: Holders, mode: str) -> None:
    """A handler on the interrupt signal installed before touchfile is imported:
    tf.native is False from the start, waits poll and keep their deadlines, and
    one RuntimeWarning says so."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path)
    proc = run_program("foreign_before_import", lock_path)
    assert proc.stdout.splitlines() == [
        "native False",
        "timeout True",
        "timeout True",
        "warnings 1 RuntimeWarning",
    ], proc.stderr


def test_python_handler_during_a_wait(lock_path: str, holders: Holders, mode: str) -> None:
    """A Python handler put on the signal while a thread is blocked in flock() does
    not restart it: that wait still ends at its deadline."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path)
    proc = run_program("python_handler_during_wait", lock_path)
    assert (proc.stdout, proc.stderr) == ("timed out True\n", "")


def test_sa_restart_handler_during_a_wait(lock_path: str, holders: Holders, mode: str) -> None:
    """Pins a known limitation: a handler with SA_RESTART put on the signal while a
    thread is blocked in flock() makes the kernel restart that flock(), so its cancel
    (or deadline) cannot end it; it ends when the lock is granted. The next wait
    notices, warns and polls."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    holder = hold(holders, lock_path)
    with subprocess.Popen(
        [sys.executable, program("restart_during_wait"), lock_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    ) as proc:  # fmt: skip
        try:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.stdout.readline() == "cancel ended it False\n"
            holder.release()
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "granted True\n"
            assert proc.stdout.readline() == "next wait timed out True\n"
            assert proc.stdout.readline() == "warned ['RuntimeWarning']\n"
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()


# ---- the waiter goes away ------------------------------------------------------------


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_daemon_thread_waiters_at_shutdown(lock_path: str, holders: Holders) -> None:
    """Interpreter shutdown while daemon threads wait (no deadline, a context, or
    deadlines landing during shutdown): the process exits at once with status 0
    and prints nothing on stderr."""
    hold(holders, lock_path)
    start = time.monotonic()
    proc = run_program("daemon_waiters", lock_path, timeout=20)
    assert time.monotonic() - start < 5
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "main returns\n", "")


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_killed_waiter_leaves_nothing(lock_path: str, holders: Holders) -> None:
    """A waiting process killed with SIGKILL never ends up holding the lock: once
    the holder releases, the lock is free."""
    holder = hold(holders, lock_path)
    with subprocess.Popen(
        [sys.executable, program("waiter"), lock_path], stdout=subprocess.PIPE, text=True, cwd="/"
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting\n"
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    holder.release()
    assert probe(lock_path)


# ---- huge and tiny timeouts -----------------------------------------------------------

HUGE = [
    1e9,
    threading.TIMEOUT_MAX,
    threading.TIMEOUT_MAX * 2,
    1e300,
    sys.float_info.max,
    math.inf,
    10**20,
    10**400,
]


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize(
    "timeout", HUGE, ids=["1e9", "TIMEOUT_MAX", "2xTIMEOUT_MAX", "1e300", "float-max",
                          "inf", "int-1e20", "int-1e400"]
)  # fmt: skip
def test_huge_timeouts_wait_until_granted(lock_path: str, timeout: float) -> None:
    """A timeout longer than any wait (1e9 s, threading.TIMEOUT_MAX, beyond it, an
    int beyond float's range) waits as if none were given: no OverflowError, no
    instant LockTimeout; a cancel ends it, and the lock is taken when released, in
    a thread and in a task."""
    assert Context.with_timeout(timeout).remaining() > 1e8
    with TouchFile(lock_path) as blocker, TouchFile(lock_path) as tf:
        blocker.acquire()
        with ThreadPoolExecutor(1) as pool:
            ctx = Context.with_cancel()
            cancelled = pool.submit(tf.acquire, timeout=timeout, ctx=ctx)
            time.sleep(0.05)
            ctx.cancel()
            with pytest.raises(LockCancelled):
                cancelled.result(timeout=5)
            got = pool.submit(tf.acquire, timeout=timeout)
            time.sleep(0.05)
            assert not got.done()
            blocker.release()
            got.result(timeout=5)
            pool.submit(tf.release).result(timeout=5)

        async def task() -> None:
            await asyncio.wait_for(tf.acquire_async(timeout=timeout), 0.05)

        blocker.acquire()
        with pytest.raises(asyncio.TimeoutError) as caught:
            asyncio.run(task())
        assert not isinstance(caught.value, LockTimeout)  # asyncio's, after 0.05 s
        blocker.release()


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize("timeout", [0.0, 5e-324, 1e-9], ids=["0", "min-float", "1e-9"])
def test_tiny_timeouts_try_once(lock_path: str, holders: Holders, timeout: float) -> None:
    """A timeout of 0, the smallest float or 1e-9 s takes a free lock, and on a held
    one raises LockTimeout at once (in the calling thread and in an asyncio task)."""
    with TouchFile(lock_path) as tf:
        with tf.lock(SHARED, timeout=timeout):
            assert not probe(lock_path)
        hold(holders, lock_path)
        start = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            tf.acquire(timeout=timeout)
        assert caught.value.waited >= 0
        with pytest.raises(LockTimeout):
            asyncio.run(tf.acquire_async(timeout=timeout))
        assert time.monotonic() - start < 0.5


def _interrupted_acquisition(
    lock_path: str, other: int, target: int, wait: bool = True, strict: bool = False
) -> tuple[bool, list[str]]:
    """An acquisition that waits 50 ms for other's lock (or, wait=False, finds
    it free), with KeyboardInterrupt raised at the entry of its target-th
    touchfile function: (whether it was raised, the functions entered).
    Checks that the lock is held by the caller or free (strict: free, if the
    acquisition raised), then leaves it free."""
    if wait:
        fcntl.flock(other, fcntl.LOCK_EX)
    timer = threading.Timer(0.05 if wait else 0, fcntl.flock, (other, fcntl.LOCK_UN))
    calls: list[str] = []

    def raise_at_target(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and "/touchfile/" in frame.f_code.co_filename:
            calls.append(frame.f_code.co_name)
            if len(calls) == target:
                sys.settrace(None)
                raise KeyboardInterrupt

    with TouchFile(lock_path) as tf:
        # No collection while traced: one would run the finalizer of some
        # earlier, unreachable handle, and count its calls as this
        # acquisition's, so that the exception lands in a __del__ (where
        # Python can only print it) instead of in the acquisition.
        gc.collect()
        gc.disable()
        timer.start()
        sys.settrace(raise_at_target)
        try:
            tf.acquire()
            interrupted = False
        except KeyboardInterrupt as error:
            interrupted = True
            kept = error  # alive, as a caller that keeps its traceback does
        finally:
            sys.settrace(None)
            gc.enable()
        timer.join()
        held, free = tf.locked(), probe(lock_path)
        assert held != free, f"at {calls[-1]}: held {held}, lock free {free}"
        if strict:  # an acquire() that raised holds nothing: no `with` would release it
            assert not (interrupted and held), f"at {calls[-1]}: raised, yet held"
        if held:
            tf.release()
        if interrupted:
            del kept
    return interrupted, calls


def test_an_exception_anywhere_in_a_wait_leaves_nothing_held(lock_path: str, mode: str) -> None:
    """KeyboardInterrupt raised at the entry of each touchfile function in turn
    (where a signal handler's exception lands), during an acquisition that waits:
    whichever it hits, the lock is either held by the caller or free, never held
    by no one."""
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        target = 1
        while _interrupted_acquisition(lock_path, other, target)[0]:
            target += 1  # until every call of the acquisition has been hit
        assert target > 5
    finally:
        os.close(other)


def test_an_exception_anywhere_in_a_logged_acquisition_leaves_nothing_held(
    lock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same, for a lock that is free and for one waited for, with the
    logger at DEBUG: its calls (stamping the hold, recording the wait) are
    places where an exception can land too. A free lock's acquire() that
    raised holds nothing."""
    caplog.set_level(logging.DEBUG, logger="touchfile")
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        for wait in (False, True):
            target = 1
            while _interrupted_acquisition(lock_path, other, target, wait, not wait)[0]:
                target += 1
            assert target > 3
    finally:
        os.close(other)
