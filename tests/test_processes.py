"""Locks across fork(), exec(), crashes and signals to the waiting process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import Holders, hold, probe, program, run_program

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling


def test_fork_child_cannot_break_parents_lock(lock_path: str) -> None:
    """After fork() the child owns none of the parent's locks: its release,
    close and normal exit leave the parent's hold intact."""
    proc = run_program("fork", lock_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "release-refused child-excluded other-excluded",
        "parent-still-holds",
        "parent-reacquired",
    ]


def test_exec_does_not_inherit_lock(lock_path: str) -> None:
    """Descriptors are O_CLOEXEC: a program exec'd by the holder does not keep
    the lock alive after the holder dies."""
    proc = run_program("exec", lock_path)
    sleeper = int(proc.stdout)
    try:
        assert probe(lock_path)
        targets = []
        for fd in os.listdir(f"/proc/{sleeper}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                targets.append(os.readlink(f"/proc/{sleeper}/fd/{fd}"))
        assert targets and lock_path not in targets
    finally:
        os.kill(sleeper, signal.SIGKILL)


def test_crashed_holder_frees_lock(lock_path: str, holders: Holders) -> None:
    """A holder killed with SIGKILL frees the lock for a waiter blocked on it."""
    holder = hold(holders, lock_path, "exclusive", "touchfile")
    from touchfile import TouchFile

    with TouchFile(lock_path) as tf:
        killer = subprocess.Popen(["sh", "-c", f"sleep 0.1; kill -9 {holder.proc.pid}"])
        start = time.monotonic()
        with tf.lock(timeout=10):
            assert time.monotonic() - start < 5
        killer.wait()


@contextlib.contextmanager
def waiting_process(lock_path: str) -> Iterator[subprocess.Popen[str]]:
    """A process whose main thread waits for the lock with no deadline (always reaped)."""
    with subprocess.Popen(
        [sys.executable, program("wait_main"), lock_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "waiting\n"
            time.sleep(0.2)  # blocked in the wait by now
            yield proc
        finally:
            proc.kill()


def test_ctrl_c_ends_main_thread_wait(lock_path: str, holders: Holders) -> None:
    """SIGINT ends a main-thread wait with no deadline by KeyboardInterrupt within
    100 ms, and leaves no lock held."""
    holder = hold(holders, lock_path)
    with waiting_process(lock_path) as proc:
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        word, when, held = proc.stdout.readline().split()
        assert word == "interrupted" and held == "False"
        assert float(when) - sent < 0.1
        holder.release()
        assert probe(lock_path)  # the interrupted waiter holds nothing


def test_other_signal_resumes_wait(lock_path: str, holders: Holders) -> None:
    """A signal that is not ours runs its Python handler, and the wait goes on
    to take the lock when it is released."""
    holder = hold(holders, lock_path)
    with waiting_process(lock_path) as proc:
        for _ in range(3):
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.05)
        assert proc.poll() is None
        holder.release()
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["acquired", "3", "True"]


@pytest.mark.parametrize("kind", ["exclusive", "shared"])
def test_lock_is_visible_to_other_processes(lock_path: str, kind: str) -> None:
    """What a TouchFile holds is what another process sees (no in-process-only lock)."""
    from touchfile import TouchFile

    with TouchFile(lock_path) as tf, tf.lock(kind):
        assert run_program("shared_probe", lock_path).stdout.strip() == (
            "held" if kind == "exclusive" else "free"
        )


def test_fork_during_a_timed_wait(lock_path: str) -> None:
    """fork() while a thread waits with a deadline: the child's own timed wait
    ends at its deadline, the parent's deadline never reaches the child (the
    wait's timer is not inherited), and the parent's wait ends at its own."""
    proc = run_program("fork_mid_wait", lock_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child timeout ok", "parent timeout ok 0"]


def test_contexts_work_in_a_child_forked_mid_cancel(lock_path: str) -> None:
    """A child forked while another thread was inside Context's bookkeeping
    can still make, use and cancel Contexts: it does not deadlock."""
    result = run_program("fork_mid_cancel", lock_path)
    assert result.stdout.split() == ["0"], result.stderr
