"""Who excludes whom: processes, threads, and the other flock() users."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time

import pytest
from helpers import Holders, hold, probe, run_program

from touchfile import EXCLUSIVE, SHARED, LockTimeout, LockType, TouchFile

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling

TOOLS = ["fcntl", "flock", "filelock", "touchfile"]


@pytest.mark.parametrize("tool", TOOLS)
def test_foreign_exclusive_excludes_us(lock_path: str, holders: Holders, tool: str) -> None:
    """An exclusive lock taken by flock(1), filelock, raw fcntl.flock or another
    TouchFile process keeps us out, and we get in once it is released."""
    holder = hold(holders, lock_path, "exclusive", tool)
    with TouchFile(lock_path) as tf:
        for kind in (SHARED, EXCLUSIVE):
            with pytest.raises(LockTimeout):
                tf.acquire(kind, timeout=0)
            with pytest.raises(LockTimeout):
                tf.acquire(kind, timeout=0.05)
        holder.release()
        with tf.lock(timeout=5):
            assert not probe(lock_path, "shared")


@pytest.mark.parametrize("tool", ["fcntl", "flock", "touchfile"])
def test_foreign_shared_overlaps_shared(lock_path: str, holders: Holders, tool: str) -> None:
    """A shared lock elsewhere admits our shared lock and keeps out our exclusive one."""
    hold(holders, lock_path, "shared", tool)
    with TouchFile(lock_path) as tf:
        with tf.lock(SHARED, timeout=0):
            pass
        with pytest.raises(LockTimeout):
            tf.acquire(EXCLUSIVE, timeout=0.02)


@pytest.mark.parametrize("kind", [SHARED, EXCLUSIVE])
def test_we_exclude_flock_command(lock_path: str, kind: LockType) -> None:
    """util-linux flock(1) cannot take what we hold (exclusive: nothing; shared: -x)."""
    with TouchFile(lock_path) as tf, tf.lock(kind):
        blocked = subprocess.run(["flock", "-n", "-x", lock_path, "true"], timeout=10)
        assert blocked.returncode == 1
        shared = subprocess.run(["flock", "-n", "-s", lock_path, "true"], timeout=10)
        assert shared.returncode == (0 if kind is SHARED else 1)
    free = subprocess.run(["flock", "-n", "-x", lock_path, "true"], timeout=10)
    assert free.returncode == 0


def test_we_exclude_filelock_and_raw_flock(lock_path: str) -> None:
    """filelock and a raw fcntl.flock in another process cannot take our exclusive lock."""
    with TouchFile(lock_path) as tf:
        with tf.lock():
            out = run_program("filelock_sees", lock_path).stdout.split()
        assert out == ["filelock-blocked", "flock-blocked"]
        out = run_program("filelock_sees", lock_path).stdout.split()
        assert out == ["filelock-got-it", "flock-got-it"]


def test_posix_record_locks_do_not_interact(lock_path: str) -> None:
    """fcntl.lockf (POSIX record locks, as fasteners uses) and flock() are separate
    on Linux: a lockf lock does not keep us out (documented in the README)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        with TouchFile(lock_path) as tf, tf.lock(timeout=0):
            pass
    finally:
        os.close(fd)


def test_threads_exclude_each_other(lock_path: str) -> None:
    """Threads sharing one TouchFile exclude each other as processes do."""
    tf = TouchFile(lock_path)
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, most
        for _ in range(200):
            with tf.lock(timeout=10):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tf.close()
    assert most == 1


def test_threads_share_shared_locks(lock_path: str) -> None:
    """Shared locks in several threads of one TouchFile overlap; exclusive waits."""
    tf = TouchFile(lock_path)
    barrier = threading.Barrier(3)
    results: list[bool] = []

    def reader() -> None:
        with tf.shared_lock(timeout=5):
            barrier.wait(timeout=5)  # all three hold the shared lock at once
            barrier.wait(timeout=5)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    barrier.wait(timeout=5)
    results.append(probe(lock_path, "shared"))
    results.append(probe(lock_path, "exclusive"))
    barrier.wait(timeout=5)
    for thread in readers:
        thread.join()
    with tf.exclusive_lock(timeout=1):
        pass
    tf.close()
    assert results == [True, False]


def test_waiting_thread_gets_lock_when_other_thread_releases(lock_path: str) -> None:
    """A thread blocked on a lock held by another thread of the same object gets it."""
    tf = TouchFile(lock_path)
    tf.acquire()
    got = threading.Event()

    def waiter() -> None:
        with tf.lock(timeout=10):
            got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not got.wait(0.1)
    tf.release()
    assert got.wait(5)
    thread.join()
    tf.close()


def test_two_objects_in_one_process_exclude(lock_path: str) -> None:
    """Two TouchFiles on one path in one thread exclude each other (no deadlock)."""
    with TouchFile(lock_path) as a, TouchFile(lock_path) as b:
        a.acquire()
        with pytest.raises(LockTimeout):
            b.acquire(timeout=0.05)
        a.release()
        b.acquire(timeout=0)
        b.release()
