"""Worker processes: holders, hammers, readers and a writer, driven over a pipe.

The pool is spawned once, so that starting 16 interpreters is paid once; a
worker runs whatever module-level function it is sent and sends back its
result. Times are time.monotonic(), which all processes share.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.contenders import BY_KEY, Lock

_locks: dict[tuple[str, str, bool], Lock] = {}  # this worker's, by (contender, path, rw)


def _lock(key: str, path: str, rw: bool = False) -> Lock:
    if (key, path, rw) not in _locks:
        _locks[key, path, rw] = BY_KEY[key].make(path, rw=rw)
    return _locks[key, path, rw]


def _serve(conn: Connection) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        fn, args = msg
        try:
            conn.send(("ok", fn(*args)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.conn.send((fn, args))

    def result(self, timeout: float = 120.0) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"worker {self.proc.pid} did not answer within {timeout:.0f} s")
        try:
            tag, value = self.conn.recv()
        except (EOFError, ConnectionError):
            self.proc.join(5)
            raise RuntimeError(
                f"worker {self.proc.pid} died (exit code {self.proc.exitcode})"
            ) from None
        if tag != "ok":
            raise RuntimeError(f"worker {self.proc.pid} failed:\n{value}")
        return value

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.submit(fn, *args)
        return self.result()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


def start_pool(n: int) -> list[Worker]:
    ctx = multiprocessing.get_context("spawn")
    return [Worker(ctx) for _ in range(n)]


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --- functions the workers run ---------------------------------------------------------------


def ping() -> int:
    return os.getpid()


def hold(key: str, path: str) -> float:
    """Take the contender's lock (exclusive) and keep it; when it was taken."""
    if not _lock(key, path).acquire(timeout=30):
        raise RuntimeError(f"{key}: holder could not lock {path} in 30 s")
    return time.monotonic()


def release(key: str, path: str) -> None:
    _lock(key, path).release()


def release_after(key: str, path: str, delay: float) -> float:
    """Sleep, then release the held lock; the time just before the release."""
    time.sleep(delay)
    t = time.monotonic()
    _lock(key, path).release()
    return t


@contextlib.contextmanager
def _board(path: str) -> Iterator[mmap.mmap]:
    """The shared board: a small file every worker maps."""
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as board:
            yield board
    finally:
        os.close(fd)


def hammer(key: str, path: str, board: str, me: int, start: float, end: float) -> tuple[int, int]:
    """Take and release the lock back to back from start to end: (acquisitions, handovers).

    Under the lock, the worker reads the last holder's number from the board
    and writes its own: a change of holder is a handover. Only acquisitions
    granted before the end count.
    """
    lock = _lock(key, path)
    with _board(board) as shared:
        count = handovers = 0
        _sleep_until(start)
        while True:
            lock.acquire()
            if time.monotonic() >= end:
                lock.release()
                return count, handovers
            (last,) = struct.unpack_from("q", shared)
            if last != me:
                handovers += 1
                struct.pack_into("q", shared, 0, me)
            count += 1
            lock.release()


def reader(
    key: str, path: str, board: str, me: int, start: float, hold: float, think: float
) -> int:
    """Shared holds of `hold` s with `think` s between them, until the writer is done: how many.

    While it holds, the reader's byte `me` of the board is 1; the board's last
    byte is the writer's "done".
    """
    lock = _lock(key, path, rw=True)
    count = 0
    with _board(board) as flags:
        _sleep_until(start)
        while not flags[-1]:
            lock.acquire(shared=True)
            flags[me] = 1
            count += 1
            time.sleep(hold)
            flags[me] = 0
            lock.release()
            time.sleep(think)
    return count


def writer(
    key: str, path: str, board: str, start: float, end: float, hold: float, think: float, cap: float
) -> tuple[list[tuple[float, bool]], int]:
    """Exclusive takes, each given up after cap s, from start to end.

    Returns (wait, granted) for each take, and how many times a reader's byte
    on the board said it held too while the writer held (0, unless exclusion
    is broken). Sets the board's last byte when done.
    """
    lock = _lock(key, path, rw=True)
    waits: list[tuple[float, bool]] = []
    overlaps = 0
    with _board(board) as flags:
        _sleep_until(start + think)
        while time.monotonic() < end:
            t0 = time.monotonic()
            granted = lock.acquire(timeout=cap)
            waits.append((time.monotonic() - t0, granted))
            if granted:
                # flags[:-1] is bytes: iterating the mmap itself yields b"\x00", which is true.
                overlaps += any(flags[:-1])
                time.sleep(hold)
                overlaps += any(flags[:-1])
                lock.release()
            time.sleep(think)
        flags[-1] = 1
    return waits, overlaps
