"""Stress and races: the chaos harness (quick mode), and deadlines and cancels
landing at random points around the entry into flock()."""

from __future__ import annotations

import fcntl
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import stress

from touchfile import Context, LockCancelled, LockTimeout, TouchFile

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling


@pytest.mark.timeout(120)
def test_chaos_harness_finds_no_violation(mode: str) -> None:
    """Processes x threads under kills, pauses, forks, timeouts and cancels keep every invariant."""
    report = stress.run(12, workers=4, threads=3, files=2)
    print(report.figures())
    assert report.violations == [], report.figures()
    # The faults really happened, and the locks were really used.
    assert report.grants > 1000, report.figures()
    assert report.timeouts > 0 and report.cancels > 0, report.figures()
    assert report.kills_holding > 0 and report.kills_other > 0, report.figures()
    assert report.pauses > 0 and report.forks > 0, report.figures()
    assert report.workers_finished == 4, report.figures()


@contextmanager
def _held_elsewhere(path: str) -> Iterator[threading.Event]:
    """Hold path's lock through another open file description; a watchdog
    releases it if a wait hangs (set() the event at each new wait)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    progress = threading.Event()
    done = threading.Event()
    hung: list[bool] = []

    def watchdog() -> None:
        while not done.is_set():
            if not progress.wait(5) and not done.is_set():
                hung.append(True)  # no new wait for 5 s: one is stuck in flock()
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            progress.clear()

    thread = threading.Thread(target=watchdog)
    thread.start()
    try:
        yield progress
    finally:
        done.set()
        progress.set()
        thread.join()
        os.close(fd)
    assert not hung, "a wait never ended: the watchdog released the lock to free it"


def test_deadlines_around_the_entry_into_flock(lock_path: str) -> None:
    """20,000 deadlines of 0-300 us land before, during and after the entry
    into flock(): every one ends the wait, none is lost."""
    rng = random.Random(5)
    late: list[float] = []
    with TouchFile(lock_path) as tf, _held_elsewhere(lock_path) as progress:
        for _ in range(20_000):
            progress.set()
            timeout = rng.uniform(0, 300e-6)
            start = time.monotonic()
            with pytest.raises(LockTimeout):
                tf.acquire(timeout=timeout)
            over = time.monotonic() - start - timeout
            if over > 0.05:
                late.append(over)
    # A few late ones are the machine's; a lost wake-up would hang instead.
    assert len(late) < 20, late


def test_cancels_around_the_entry_into_flock(lock_path: str) -> None:
    """10,000 cancels from another thread, 0-300 us after the call, each end
    their wait with LockCancelled, wherever in the wait they land."""
    rng = random.Random(6)
    orders: queue.Queue[tuple[Context, float] | None] = queue.Queue()
    fired: queue.Queue[None] = queue.Queue()

    def canceller() -> None:
        while (order := orders.get()) is not None:
            ctx, delay = order
            time.sleep(delay)
            ctx.cancel()
            fired.put(None)

    thread = threading.Thread(target=canceller)
    thread.start()
    try:
        with TouchFile(lock_path) as tf, _held_elsewhere(lock_path) as progress:
            for _ in range(10_000):
                progress.set()
                ctx = Context.with_cancel()
                orders.put((ctx, rng.uniform(0, 300e-6)))
                with pytest.raises(LockCancelled):
                    tf.acquire(ctx=ctx)
                fired.get()
    finally:
        orders.put(None)
        thread.join()
