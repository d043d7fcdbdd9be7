"""How waits end: the lock, a deadline, a cancel, close(), or a replaced file."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import pytest
from helpers import Holders, hold, probe

from touchfile import EXCLUSIVE, SHARED, Context, LockCancelled, LockError, LockTimeout, TouchFile

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling


def in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    """Run fn in a thread; its result or exception lands in the returned list."""
    assert callable(fn)
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as error:
            out.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_timeout_zero_is_one_try(lock_path: str, holders: Holders) -> None:
    """timeout=0 takes a free lock, and fails at once on a held one."""
    with TouchFile(lock_path) as tf:
        with tf.lock(timeout=0):
            pass
        hold(holders, lock_path)
        start = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            tf.acquire(timeout=0)
        assert time.monotonic() - start < 0.05
        assert caught.value.waited == 0 or caught.value.waited < 0.05


@pytest.mark.parametrize("timeout", [1e-9, 0.001, 0.05, 0.2])
def test_timeout_in_worker_thread(lock_path: str, holders: Holders, timeout: float) -> None:
    """A worker thread's wait ends at its deadline (not before) with LockTimeout."""
    hold(holders, lock_path)
    tf = TouchFile(lock_path)
    start = time.monotonic()
    thread, out = in_thread(lambda: tf.acquire(SHARED, timeout=timeout))
    thread.join(10)
    elapsed = time.monotonic() - start
    assert isinstance(out[0], LockTimeout)
    assert out[0].kind is SHARED and out[0].path == tf.path
    assert timeout <= elapsed < timeout + 0.5
    assert not tf.locked()
    tf.close()


def test_waited_counts_from_the_call(lock_path: str, holders: Holders) -> None:
    """LockTimeout.waited is never less than the timeout, nor more than really passed,
    even while another thread keeps the interpreter busy."""
    hold(holders, lock_path)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        with TouchFile(lock_path) as tf:
            for _ in range(20):
                t0 = time.monotonic()
                with pytest.raises(LockTimeout) as err:
                    tf.acquire(timeout=0.02)
                assert 0.02 <= err.value.waited <= time.monotonic() - t0
    finally:
        stop.set()
        spinner.join()


def test_timeout_message(lock_path: str, holders: Holders) -> None:
    """The error names the path, the kind and how long it waited."""
    hold(holders, lock_path)
    with TouchFile(lock_path) as tf, pytest.raises(LockTimeout) as caught:
        tf.acquire(EXCLUSIVE, timeout=0.05)
    message = str(caught.value)
    assert lock_path in message and "exclusive" in message and "timed out after 0.0" in message
    assert caught.value.waited >= 0.05


def test_handoff_blocks_in_kernel(lock_path: str, holders: Holders, mode: str) -> None:
    """A waiter holds the lock soon after another process releases it (median
    under 20 ms: no 50 ms poll; native waits wake in the kernel)."""
    tf = TouchFile(lock_path)
    delays = []
    for _ in range(5):
        holder = hold(holders, lock_path)

        def waiter() -> float:
            tf.acquire(timeout=10)
            got = time.monotonic()
            tf.release()
            return got

        thread, out = in_thread(waiter)
        time.sleep(0.05)  # the waiter is blocked by now
        released = holder.release()
        thread.join(10)
        assert isinstance(out[0], float), out
        delays.append(out[0] - released)
        holder.stop()
    assert statistics.median(delays) < 0.020, delays
    tf.close()


def test_context_timeout(lock_path: str, holders: Holders) -> None:
    """A context's deadline ends the wait with LockTimeout."""
    hold(holders, lock_path)
    with TouchFile(lock_path) as tf:
        ctx = Context.with_timeout(0.05)
        start = time.monotonic()
        with pytest.raises(LockTimeout):
            tf.acquire(ctx=ctx)
        assert 0.05 <= time.monotonic() - start < 1


def test_earliest_of_timeout_and_context(lock_path: str, holders: Holders) -> None:
    """timeout= and ctx= together: whichever ends first ends the wait."""
    hold(holders, lock_path)
    with TouchFile(lock_path) as tf:
        start = time.monotonic()
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=0.05, ctx=Context.with_timeout(30))
        assert time.monotonic() - start < 1
        start = time.monotonic()
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=30, ctx=Context.with_timeout(0.05))
        assert time.monotonic() - start < 1
        ctx = Context.with_cancel()
        threading.Timer(0.05, ctx.cancel).start()
        with pytest.raises(LockCancelled):
            tf.acquire(timeout=30, ctx=ctx)
        assert time.monotonic() - start < 2


def test_parent_deadline_reaches_child(lock_path: str, holders: Holders) -> None:
    """A child context ends at its parent's earlier deadline."""
    hold(holders, lock_path)
    parent = Context.with_timeout(0.05)
    child = Context.with_timeout(30, parent=parent)
    start = time.monotonic()
    with TouchFile(lock_path) as tf, pytest.raises(LockTimeout):
        tf.acquire(ctx=child)
    assert time.monotonic() - start < 1


def test_done_context_fails_at_once_even_when_free(lock_path: str) -> None:
    """A cancelled or expired context fails at once, even on a free lock."""
    with TouchFile(lock_path) as tf:
        ctx = Context.with_cancel()
        ctx.cancel()
        with pytest.raises(LockCancelled) as caught:
            tf.acquire(ctx=ctx)
        assert caught.value.waited == 0
        with pytest.raises(LockCancelled):
            tf.acquire(ctx=Context.with_cancel(parent=ctx))
        with pytest.raises(LockTimeout):
            tf.acquire(ctx=Context.with_deadline(time.monotonic() - 1))
        with pytest.raises(LockTimeout):
            tf.with_lock(lambda: None, ctx=Context.with_timeout(0))
        assert probe(lock_path)


@pytest.mark.parametrize("level", ["self", "parent", "grandparent"])
def test_cancel_from_another_thread(lock_path: str, holders: Holders, level: str) -> None:
    """ctx.cancel() from any thread, on the context or an ancestor, ends the wait
    promptly with LockCancelled; the context is not reusable afterwards."""
    hold(holders, lock_path)
    grandparent = Context.with_cancel()
    parent = Context.with_timeout(60, parent=grandparent)
    ctx = Context.with_cancel(parent=parent)
    target = {"self": ctx, "parent": parent, "grandparent": grandparent}[level]
    tf = TouchFile(lock_path)
    thread, out = in_thread(lambda: tf.acquire(ctx=ctx))
    time.sleep(0.05)
    assert thread.is_alive()
    start = time.monotonic()
    target.cancel()
    thread.join(5)
    assert time.monotonic() - start < 0.5
    assert isinstance(out[0], LockCancelled) and "cancelled after" in str(out[0])
    tf.close()


def test_one_cancel_ends_many_waits(lock_path: str, holders: Holders) -> None:
    """One context shared by many waiting threads: one cancel() ends them all."""
    hold(holders, lock_path)
    ctx = Context.with_cancel()
    tf = TouchFile(lock_path)
    waits = [in_thread(lambda: tf.acquire(ctx=ctx)) for _ in range(20)]
    time.sleep(0.1)
    ctx.cancel()
    for thread, out in waits:
        thread.join(5)
        assert isinstance(out[0], LockCancelled)
    tf.close()


def test_close_ends_waits_in_other_threads(lock_path: str, holders: Holders) -> None:
    """close() while other threads wait on the same object: their waits end at
    once with LockError, and no descriptor is left behind."""
    hold(holders, lock_path)
    fds_before = len(os.listdir("/proc/self/fd"))
    tf = TouchFile(lock_path)
    waits = [in_thread(lambda: tf.acquire()) for _ in range(3)]
    waits.append(in_thread(lambda: tf.acquire(SHARED, timeout=60)))
    time.sleep(0.1)
    start = time.monotonic()
    tf.close()
    for thread, out in waits:
        thread.join(5)
        assert not thread.is_alive()
        assert isinstance(out[0], LockError) and "closed" in str(out[0])
    assert time.monotonic() - start < 1
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_lock_granted_to_waiter_after_cancelled_neighbour(lock_path: str, holders: Holders) -> None:
    """Cancelling one waiter leaves another waiter on the same lock unharmed."""
    holder = hold(holders, lock_path)
    tf = TouchFile(lock_path)
    ctx = Context.with_cancel()
    cancelled_thread, cancelled = in_thread(lambda: tf.acquire(ctx=ctx))
    patient_thread, patient = in_thread(lambda: tf.with_lock(lambda: "got it", timeout=10))
    time.sleep(0.05)
    ctx.cancel()
    cancelled_thread.join(5)
    assert isinstance(cancelled[0], LockCancelled)
    assert patient_thread.is_alive()
    holder.release()
    patient_thread.join(5)
    assert patient == ["got it"]
    tf.close()


def test_replaced_file_while_waiting(lock_path: str, holders: Holders) -> None:
    """The file at the path is replaced while we wait: the lock we end up with
    guards the path's current file, not the old one."""
    holder = hold(holders, lock_path)
    tf = TouchFile(lock_path)
    got, done = threading.Event(), threading.Event()

    def waiter() -> None:
        with tf.lock(timeout=10):
            got.set()
            done.wait(10)

    thread, out = in_thread(waiter)
    time.sleep(0.05)
    replacement = Path(lock_path + ".new")
    replacement.touch()
    os.rename(replacement, lock_path)  # new inode at the path
    holder.release()  # our waiter wakes holding the *old* inode
    assert got.wait(10)
    assert not probe(lock_path)  # a newcomer opening the path is kept out
    done.set()
    thread.join(10)
    assert out == [None]
    assert probe(lock_path)
    tf.close()


def test_deleted_file_is_recreated(lock_path: str) -> None:
    """A lock file deleted between acquisitions is recreated, and the lock
    guards the path again."""
    with TouchFile(lock_path) as tf:
        tf.acquire()
        tf.release()
        os.unlink(lock_path)
        tf.acquire()
        assert os.path.exists(lock_path)
        assert not probe(lock_path)
        tf.release()


def test_deleted_while_held(lock_path: str) -> None:
    """Deleting the lock file while it is held: release still works, and the
    next acquisition recreates it."""
    with TouchFile(lock_path) as tf:
        tf.acquire()
        os.unlink(lock_path)
        tf.release()
        with tf.lock(timeout=1):
            assert not probe(lock_path)


def test_many_short_waits_never_hang(lock_path: str, holders: Holders) -> None:
    """Deadlines landing at every point around the entry into the wait (0..300 µs)
    always end it: the interrupt is re-sent until the waiter has left."""
    hold(holders, lock_path)
    tf = TouchFile(lock_path)
    start = time.monotonic()
    for i in range(400):
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=(i % 60) * 5e-6)
    assert time.monotonic() - start < 30
    tf.close()


def test_many_racing_cancels_never_hang(lock_path: str, holders: Holders) -> None:
    """Cancels landing at random points around the entry into the wait always end it."""
    import random

    hold(holders, lock_path)
    tf = TouchFile(lock_path)
    rng = random.Random(7)
    for _ in range(200):
        ctx = Context.with_cancel()
        timer = threading.Timer(rng.uniform(0, 0.0005), ctx.cancel)
        timer.start()
        with pytest.raises(LockCancelled):
            tf.acquire(ctx=ctx)
        timer.join()
    tf.close()
