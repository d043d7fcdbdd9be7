#!/usr/bin/env python3
"""touchfile benchmarks: costs and latencies side by side with raw flock() and filelock.

    python benchmarks/bench.py            # full run, about a minute
    python benchmarks/bench.py --quick    # smoke test, under ~25 s
    python benchmarks/bench.py --json out.json

Prints a Markdown table to stdout (progress goes to stderr) and writes the same
Markdown, plus every raw sample as JSON, to benchmarks/results/bench-YYYYMMDD.md
and .json (bench-YYYYMMDD-quick.* with --quick, so a smoke test never
overwrites a full run).

Measured, each contender side by side in one run:

1. uncontended acquire+release (timeit-like batches; median and p99 of batch means);
2. handoff latency: a holder in another process releases, our blocked waiter wakes;
3. deadline overshoot for timeouts of 1, 10 and 100 ms;
4. cancel latency (Context.cancel() from another thread);
5. CPU burnt while waiting on a held lock;
6. lateness of 1000 threads waiting at once, each with its own deadline;
7. asyncio handoff latency: an asyncio task blocked in await acquire_async()
   (against filelock's AsyncFileLock), holder in another process as in 2.;
8. asyncio cancel latency: task.cancel() of a task waiting for a held lock.

Times come from time.monotonic() (CLOCK_MONOTONIC, comparable across
processes) or time.perf_counter(); CPU from time.process_time().
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import filelock

import touchfile
from touchfile import Context, LockCancelled, LockTimeout, TouchFile

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MS = 1e-3
US = 1e-6

# ---------------------------------------------------------------------------
# statistics and formatting


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between closest ranks; NaN if empty."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "median": math.nan, "p99": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(xs),
        "median": percentile(xs, 50),
        "p99": percentile(xs, 99),
        "min": min(xs),
        "max": max(xs),
        "mean": sum(xs) / len(xs),
    }


def fmt_t(seconds: float) -> str:
    """µs below a millisecond, ms below a second, s above."""
    if math.isnan(seconds):
        return "—"
    a = abs(seconds)
    if a < 10 * US:
        return f"{seconds / US:.2f} µs"
    if a < MS:
        return f"{seconds / US:.0f} µs"
    if a < 10 * MS:
        return f"{seconds / MS:.2f} ms"
    if a < 1.0:
        return f"{seconds / MS:.1f} ms"
    return f"{seconds:.2f} s"


def cell(stats: dict[str, float] | None) -> str:
    """'median / p99 (n=N)' for a summary, '—' for none."""
    if stats is None or not stats["n"]:
        return "—"
    return f"{fmt_t(stats['median'])} / {fmt_t(stats['p99'])} (n={int(stats['n'])})"


def machine_cpu() -> tuple[float, float]:
    """(CPU seconds busy, all processes; VM steal seconds) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    tick = float(os.sysconf("SC_CLK_TCK"))
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """Average cores busy with OTHER processes (and VM steal) over a stretch of time."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy, self.steal = machine_cpu()
        self.own = own_cpu()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        busy, steal = machine_cpu()
        own = own_cpu() - self.own
        return {
            "wall_s": wall,
            "own_cores": own / wall,
            "other_cores": max(0.0, busy - self.busy - own) / wall,
            "steal_cores": (steal - self.steal) / wall,
        }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class Config:
    quick: bool
    unc_batches: int
    unc_ops: int
    unc_ops_filelock: int
    handoff_rounds: int
    handoff_rounds_fl_default: int
    over_n: int  # samples for T = 1 ms and 10 ms (touchfile)
    over_n_100: int  # samples for T = 100 ms (touchfile)
    over_n_fl: int  # filelock, T = 1 ms and 10 ms
    over_n_fl_100: int
    cancel_n: int
    cancel_n_poll: int
    cancel_n_fl: int
    cpu_native_s: float
    cpu_other_s: float
    many_n: int
    many_polling: bool
    async_handoff_rounds: int
    async_handoff_rounds_fl: int
    async_cancel_n: int
    async_cancel_n_poll: int
    async_cancel_n_fl: int


FULL = Config(
    quick=False,
    unc_batches=20,
    unc_ops=20_000,
    unc_ops_filelock=1_000,
    handoff_rounds=40,
    handoff_rounds_fl_default=20,
    over_n=100,
    over_n_100=20,
    over_n_fl=40,
    over_n_fl_100=10,
    cancel_n=200,
    cancel_n_poll=100,
    cancel_n_fl=30,
    cpu_native_s=10.0,
    cpu_other_s=2.0,
    many_n=1000,
    many_polling=True,
    async_handoff_rounds=40,
    async_handoff_rounds_fl=20,
    async_cancel_n=200,
    async_cancel_n_poll=100,
    async_cancel_n_fl=50,
)

QUICK = Config(
    quick=True,
    unc_batches=5,
    unc_ops=5_000,
    unc_ops_filelock=300,
    handoff_rounds=10,
    handoff_rounds_fl_default=5,
    over_n=20,
    over_n_100=5,
    over_n_fl=10,
    over_n_fl_100=3,
    cancel_n=50,
    cancel_n_poll=20,
    cancel_n_fl=8,
    cpu_native_s=2.0,
    cpu_other_s=1.0,
    many_n=1000,
    many_polling=False,
    async_handoff_rounds=10,
    async_handoff_rounds_fl=5,
    async_cancel_n=30,
    async_cancel_n_poll=15,
    async_cancel_n_fl=10,
)


@dataclass
class Series:
    """Samples (seconds, or seconds per op) of one contender in one measurement."""

    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, float]:
        return summarize(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.stats(),
            "errors": self.errors,
            "extra": self.extra,
            "samples": self.samples,
        }


# ---------------------------------------------------------------------------
# contenders


def make_touchfile(path: str, native: bool) -> TouchFile:
    """A TouchFile; native=False constructs it with TOUCHFILE_NATIVE=0 (polling)."""
    if native:
        return TouchFile(path)
    old = os.environ.get("TOUCHFILE_NATIVE")
    os.environ["TOUCHFILE_NATIVE"] = "0"
    try:
        return TouchFile(path)
    finally:
        if old is None:
            del os.environ["TOUCHFILE_NATIVE"]
        else:
            os.environ["TOUCHFILE_NATIVE"] = old


class RawHolder:
    """Holds the lock through its own open file description in this process.

    flock() locks on separate open file descriptions conflict even within one
    process, so this excludes every contender without another process.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def __enter__(self) -> RawHolder:
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------
# 1. uncontended acquire + release


def bench_uncontended(
    cfg: Config, path: str, tf_native: TouchFile, tf_poll: TouchFile
) -> dict[str, Series]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    fl = filelock.FileLock(path)

    def raw(n: int) -> None:
        flock, ex, un = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN
        for _ in range(n):
            flock(fd, ex)
            flock(fd, un)

    def pair(acquire: Callable[[], object], release: Callable[[], object]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                acquire()
                release()

        return run

    contenders: dict[str, tuple[Callable[[int], None], int]] = {
        "raw": (raw, cfg.unc_ops),
        "native": (pair(tf_native.acquire, tf_native.release), cfg.unc_ops),
        "polling": (pair(tf_poll.acquire, tf_poll.release), cfg.unc_ops),
        "filelock": (pair(fl.acquire, fl.release), cfg.unc_ops_filelock),
    }
    out = {name: Series(extra={"ops_per_batch": ops}) for name, (_, ops) in contenders.items()}
    try:
        for name, (fn, _) in contenders.items():  # warm up
            fn(200 if name == "filelock" else 2000)
        gc_was = gc.isenabled()
        gc.disable()  # as timeit does
        try:
            for _ in range(cfg.unc_batches):  # interleaved, so noise hits all alike
                for name, (fn, ops) in contenders.items():
                    t0 = time.perf_counter()
                    fn(ops)
                    out[name].samples.append((time.perf_counter() - t0) / ops)
        finally:
            if gc_was:
                gc.enable()
    finally:
        os.close(fd)
    return out


# ---------------------------------------------------------------------------
# 2. handoff latency (holder in another process)


def _holder_main(path: str, conn: Connection) -> None:
    """The other process: locks on request; releases after a delay, reporting when."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg[0] == "lock":
                fcntl.flock(fd, fcntl.LOCK_EX)
                conn.send(("locked", time.monotonic()))
            elif msg[0] == "release":
                time.sleep(float(msg[1]))
                t_release = time.monotonic()  # immediately before the release
                fcntl.flock(fd, fcntl.LOCK_UN)
                conn.send(("released", t_release))
            else:
                return
    finally:
        os.close(fd)


def _expect(conn: Connection, what: str, timeout: float = 30.0) -> float:
    if not conn.poll(timeout):
        raise RuntimeError(f"holder process did not answer {what!r} within {timeout} s")
    tag, value = conn.recv()
    if tag != what:
        raise RuntimeError(f"holder process answered {tag!r}, expected {what!r}")
    return float(value)


@dataclass
class Contender:
    acquire: Callable[[], object]
    release: Callable[[], object]
    rounds: int
    jitter: float = 0.010  # random extra hold, >= the contender's poll period


def bench_handoff(
    cfg: Config, path: str, tf_native: TouchFile, tf_poll: TouchFile
) -> dict[str, Series]:
    raw_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    fl_default = filelock.FileLock(path)
    fl_fast = filelock.FileLock(path, poll_interval=0.001)
    r = cfg.handoff_rounds
    contenders: dict[str, Contender] = {
        "raw": Contender(
            lambda: fcntl.flock(raw_fd, fcntl.LOCK_EX),
            lambda: fcntl.flock(raw_fd, fcntl.LOCK_UN),
            r,
        ),
        "native": Contender(tf_native.acquire, tf_native.release, r),
        "native_timeout": Contender(lambda: tf_native.acquire(timeout=10), tf_native.release, r),
        "polling": Contender(tf_poll.acquire, tf_poll.release, r),
        "filelock_default": Contender(
            fl_default.acquire, fl_default.release, cfg.handoff_rounds_fl_default, 0.050
        ),
        "filelock_1ms": Contender(fl_fast.acquire, fl_fast.release, r),
    }
    out = {name: Series(extra={"discarded_not_blocked": 0}) for name in contenders}
    rng = random.Random(20240601)
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(target=_holder_main, args=(path, child), daemon=True)
    proc.start()
    child.close()
    try:
        for rnd in range(max(c.rounds for c in contenders.values())):
            for name, c in contenders.items():
                if rnd >= c.rounds:
                    continue
                parent.send(("lock",))
                _expect(parent, "locked")
                parent.send(("release", 0.020 + rng.uniform(0.0, c.jitter)))
                t_call = time.monotonic()
                c.acquire()
                t_acquired = time.monotonic()  # immediately after acquire returned
                c.release()
                t_release = _expect(parent, "released")
                series = out[name]
                if t_release - t_call < 0.010:  # the waiter may not have been blocked yet
                    series.extra["discarded_not_blocked"] += 1
                    continue
                latency = t_acquired - t_release
                if latency < 0:
                    series.errors.append(
                        f"acquired {-latency * 1e6:.0f} µs BEFORE the holder released"
                    )
                series.samples.append(latency)
        parent.send(("quit",))
    finally:
        parent.close()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        os.close(raw_fd)
    return out


# ---------------------------------------------------------------------------
# 3.-4. deadline overshoot and cancel latency (waiter in a worker thread)


def _in_thread(fn: Callable[[], None], limit: float) -> str | None:
    """Run fn in a fresh daemon thread; an error string if it hangs past limit."""
    th = threading.Thread(target=fn, daemon=True)
    th.start()
    th.join(limit)
    return f"waiter still blocked after {limit:.0f} s (hang)" if th.is_alive() else None


TimedAttempt = Callable[[float], object]


def _overshoot_sample(attempt: TimedAttempt, timeout: float, series: Series) -> None:
    def run() -> None:
        start = time.monotonic()
        try:
            attempt(timeout)
        except (LockTimeout, filelock.Timeout):
            series.samples.append(time.monotonic() - (start + timeout))
            return
        except BaseException as e:
            series.errors.append(f"{type(e).__name__}: {e}")
            return
        series.errors.append("acquired a lock held by another open file description")

    hang = _in_thread(run, timeout + 10)
    if hang:
        series.errors.append(hang)


def _acq_rel_tf(tf: TouchFile) -> TimedAttempt:
    def attempt(timeout: float) -> None:
        tf.acquire(timeout=timeout)
        tf.release()

    return attempt


def _acq_rel_fl(fl: filelock.BaseFileLock) -> TimedAttempt:
    def attempt(timeout: float) -> None:
        fl.acquire(timeout=timeout)
        fl.release()

    return attempt


def bench_overshoot(
    cfg: Config, path: str, tf_native: TouchFile, tf_poll: TouchFile
) -> dict[str, dict[str, Series]]:
    fl = filelock.FileLock(path)
    attempts: dict[str, TimedAttempt] = {
        "native": _acq_rel_tf(tf_native),
        "polling": _acq_rel_tf(tf_poll),
        "filelock": _acq_rel_fl(fl),
    }
    out: dict[str, dict[str, Series]] = {}
    holder = RawHolder(path)
    try:
        with holder:
            for timeout in (0.001, 0.010, 0.100):
                key = f"T={timeout * 1000:g}ms"
                big = timeout >= 0.1
                counts = {
                    "native": cfg.over_n_100 if big else cfg.over_n,
                    "polling": cfg.over_n_100 if big else cfg.over_n,
                    "filelock": cfg.over_n_fl_100 if big else cfg.over_n_fl,
                }
                row = out[key] = {name: Series() for name in attempts}
                for i in range(max(counts.values())):
                    for name, attempt in attempts.items():
                        if i < counts[name]:
                            _overshoot_sample(attempt, timeout, row[name])
    finally:
        holder.close()
    return out


def bench_cancel(
    cfg: Config, path: str, tf_native: TouchFile, tf_poll: TouchFile
) -> dict[str, Series]:
    fl = filelock.FileLock(path)
    out = {"native": Series(), "polling": Series(), "filelock": Series()}
    counts = {"native": cfg.cancel_n, "polling": cfg.cancel_n_poll, "filelock": cfg.cancel_n_fl}
    rng = random.Random(7)

    def sample(name: str) -> None:
        series = out[name]
        ready = threading.Event()
        cancelled = threading.Event()  # for filelock's polled cancel_check
        ctx = Context.with_cancel()
        caught: list[float] = []

        def run() -> None:
            ready.set()
            try:
                if name == "filelock":
                    fl.acquire(timeout=30, cancel_check=cancelled.is_set)
                    fl.release()
                else:
                    tf = tf_native if name == "native" else tf_poll
                    tf.acquire(timeout=30, ctx=ctx)
                    tf.release()
            except (LockCancelled, filelock.Timeout):
                caught.append(time.monotonic())
                return
            except BaseException as e:
                series.errors.append(f"{type(e).__name__}: {e}")
                return
            series.errors.append("acquired a lock held by another open file description")

        th = threading.Thread(target=run, daemon=True)
        th.start()
        try:
            ready.wait(10)
            time.sleep(0.005 + rng.uniform(0.0, 0.002))  # let it block
            t0 = time.monotonic()
            if name == "filelock":
                cancelled.set()
            else:
                ctx.cancel()
        finally:
            th.join(35)
        if th.is_alive():
            series.errors.append("waiter still blocked 35 s after cancel (hang)")
        elif caught:
            series.samples.append(caught[0] - t0)

    holder = RawHolder(path)
    try:
        with holder:
            for i in range(max(counts.values())):
                for name in out:
                    if i < counts[name]:
                        sample(name)
    finally:
        holder.close()
    return out


# ---------------------------------------------------------------------------
# 5. CPU while waiting


def bench_cpu(
    cfg: Config, path: str, tf_native: TouchFile, tf_poll: TouchFile
) -> dict[str, Series]:
    fl = filelock.FileLock(path)
    plan: dict[str, tuple[TimedAttempt, float]] = {
        "native": (_acq_rel_tf(tf_native), cfg.cpu_native_s),
        "polling": (_acq_rel_tf(tf_poll), cfg.cpu_other_s),
        "filelock": (_acq_rel_fl(fl), cfg.cpu_other_s),
    }
    out: dict[str, Series] = {}
    holder = RawHolder(path)
    try:
        with holder:
            for name, (attempt, seconds) in plan.items():
                series = out[name] = Series()
                series.extra["python_threads"] = threading.active_count()
                gc.collect()
                c0, w0 = time.process_time(), time.monotonic()
                try:
                    attempt(seconds)
                    series.errors.append("acquired a lock held by another open file description")
                except (LockTimeout, filelock.Timeout):
                    pass
                cpu, wall = time.process_time() - c0, time.monotonic() - w0
                series.extra.update(cpu_s=cpu, wall_s=wall, scale_to_10s=10.0 / wall)
                series.samples.append(cpu * 10.0 / wall)  # CPU seconds per 10 s of waiting
    finally:
        holder.close()
    return out


# ---------------------------------------------------------------------------
# 6. many waiters


def bench_many(path: str, tf: TouchFile | None, n: int) -> Series:
    """n threads wait at once on one TouchFile, with deadlines spread over 0.5..1.5 s.

    tf=None is the control: each thread time.sleep()s until its deadline, to
    show what the machine and the GIL alone add to a thread's wake-up.
    """
    series = Series(extra={"threads": n})
    late: list[float | None] = [None] * n
    barrier = threading.Barrier(n + 1)

    def run(i: int, timeout: float) -> None:
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            return
        start = time.monotonic()
        deadline = start + timeout
        try:
            if tf is None:
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise LockTimeout(path, touchfile.EXCLUSIVE, timeout)
            tf.acquire(timeout=timeout)
        except LockTimeout:
            late[i] = time.monotonic() - deadline
            return
        except BaseException as e:
            series.errors.append(f"thread {i}: {type(e).__name__}: {e}")
            return
        series.errors.append(f"thread {i}: acquired a lock held by another open file description")
        tf.release()

    # Python's garbage collector stops every thread while it runs: record its
    # pauses, so that a cluster of late wake-ups can be told apart from them.
    gc_pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = time.monotonic()
        else:
            gc_pauses.append((gc_start[0], time.monotonic() - gc_start[0], info["generation"]))

    holder = RawHolder(path)
    threads: list[threading.Thread] = []
    old_stack = threading.stack_size(256 * 1024)
    gc.callbacks.append(on_gc)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with holder:
            for i in range(n):
                timeout = 0.5 + (i / (n - 1) if n > 1 else 0.0)
                th = threading.Thread(target=run, args=(i, timeout), daemon=True)
                th.start()
                threads.append(th)
            barrier.wait(60)
            t_go = time.monotonic()
            for th in threads:
                th.join(max(0.1, t_go + 30 - time.monotonic()))
            hung = sum(th.is_alive() for th in threads)
            if hung:
                series.errors.append(f"{hung} threads still blocked 30 s after start (hang)")
            series.extra["wall_s"] = time.monotonic() - t_go
    finally:
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        gc.callbacks.remove(on_gc)
        threading.stack_size(old_stack)
        holder.close()
    # The whole section (start, waits, timeouts, exits): what the waits cost the machine.
    series.extra["cpu_user_s"] = usage1.ru_utime - usage0.ru_utime
    series.extra["cpu_sys_s"] = usage1.ru_stime - usage0.ru_stime
    series.extra["voluntary_ctx_switches"] = usage1.ru_nvcsw - usage0.ru_nvcsw
    series.extra["gc_collections"] = len(gc_pauses)
    series.extra["gc_longest_pause_s"] = max((d for _, d, _ in gc_pauses), default=0.0)
    series.extra["gc_pauses"] = gc_pauses
    series.samples = [x for x in late if x is not None]
    series.extra["later_than_5ms"] = sum(x > 0.005 for x in series.samples)
    series.extra["early"] = sum(x < 0 for x in series.samples)
    return series


# ---------------------------------------------------------------------------
# 7.-8. asyncio: handoff and cancel latency of a task awaiting the lock
#
# Each contender gets fresh lock objects: acquire_async() makes a TouchFile
# hand its locks to tasks, and the sections above should not see that.


@dataclass
class AsyncContender:
    acquire: Callable[[], Awaitable[object]]
    release: Callable[[], Awaitable[object]]
    rounds: int
    jitter: float = 0.010  # random extra hold, >= the contender's poll period


def _async_tf(tf: TouchFile) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(acquire, release) coroutine functions for a task, timeout=None."""

    async def release() -> None:
        tf.release()

    return tf.acquire_async, release


def _async_fl(
    fl: filelock.BaseAsyncFileLock,
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    """(acquire, release) of an AsyncFileLock as users write it: await acquire()."""

    async def acquire() -> object:
        return await fl.acquire()

    async def release() -> None:
        await fl.release()

    return acquire, release


def bench_handoff_async(cfg: Config, path: str) -> dict[str, Series]:
    """As bench_handoff, with the waiter an asyncio task blocked in an await."""
    tf_native = make_touchfile(path, native=True)
    tf_poll = make_touchfile(path, native=False)
    out: dict[str, Series] = {}

    async def main() -> None:
        fl = filelock.AsyncFileLock(path)  # default poll_interval (50 ms), in the loop's executor
        r = cfg.async_handoff_rounds
        contenders = {
            "native": AsyncContender(*_async_tf(tf_native), r),
            "polling": AsyncContender(*_async_tf(tf_poll), r),
            "filelock": AsyncContender(*_async_fl(fl), cfg.async_handoff_rounds_fl, 0.050),
        }
        out.update({name: Series(extra={"discarded_not_blocked": 0}) for name in contenders})
        rng = random.Random(20240602)
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        proc = mp.Process(target=_holder_main, args=(path, child), daemon=True)
        proc.start()
        child.close()
        try:
            for c in contenders.values():  # warm up: the first wait starts a thread
                parent.send(("lock",))
                _expect(parent, "locked")
                parent.send(("release", 0.005))
                await c.acquire()
                await c.release()
                _expect(parent, "released")
            for rnd in range(max(c.rounds for c in contenders.values())):
                for name, c in contenders.items():
                    if rnd >= c.rounds:
                        continue
                    # The pipe is read blocking, stalling the loop: nothing else runs on it.
                    parent.send(("lock",))
                    _expect(parent, "locked")
                    parent.send(("release", 0.020 + rng.uniform(0.0, c.jitter)))
                    t_call = time.monotonic()
                    await c.acquire()
                    t_acquired = time.monotonic()  # immediately after the await returned
                    await c.release()
                    t_release = _expect(parent, "released")
                    series = out[name]
                    if t_release - t_call < 0.010:  # the waiter may not have been blocked yet
                        series.extra["discarded_not_blocked"] += 1
                        continue
                    latency = t_acquired - t_release
                    if latency < 0:
                        series.errors.append(
                            f"acquired {-latency * 1e6:.0f} µs BEFORE the holder released"
                        )
                    series.samples.append(latency)
            parent.send(("quit",))
        finally:
            parent.close()
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)

    try:
        asyncio.run(main())
    finally:
        tf_native.close()
        tf_poll.close()
    return out


def bench_cancel_async(cfg: Config, path: str) -> dict[str, Series]:
    """task.cancel() of a task awaiting a held lock, until its except CancelledError runs."""
    tf_native = make_touchfile(path, native=True)
    tf_poll = make_touchfile(path, native=False)
    counts = {
        "native": cfg.async_cancel_n,
        "polling": cfg.async_cancel_n_poll,
        "filelock": cfg.async_cancel_n_fl,
    }
    out = {name: Series() for name in counts}
    rng = random.Random(8)

    async def main() -> None:
        fl = filelock.AsyncFileLock(path)
        acquires: dict[str, Callable[[], Awaitable[object]]] = {
            "native": lambda: tf_native.acquire_async(timeout=30),
            "polling": lambda: tf_poll.acquire_async(timeout=30),
            "filelock": lambda: fl.acquire(timeout=30),
        }
        releases: dict[str, Callable[[], Awaitable[None]]] = {
            "native": _async_tf(tf_native)[1],
            "polling": _async_tf(tf_poll)[1],
            "filelock": _async_fl(fl)[1],
        }

        async def sample(name: str) -> None:
            series = out[name]
            caught: list[float] = []

            async def waiter() -> None:
                try:
                    await acquires[name]()
                except asyncio.CancelledError:
                    caught.append(time.monotonic())
                    raise
                except BaseException as e:
                    series.errors.append(f"{type(e).__name__}: {e}")
                    return
                series.errors.append("acquired a lock held by another open file description")
                await releases[name]()

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.005 + rng.uniform(0.0, 0.002))  # let it block
            t0 = time.monotonic()
            task.cancel()
            await asyncio.wait({task}, timeout=35)
            if not task.done():
                series.errors.append("task still waiting 35 s after cancel (hang)")
            elif not task.cancelled():
                series.errors.append("the task was not cancelled")
            elif caught:
                series.samples.append(caught[0] - t0)

        for i in range(max(counts.values())):
            for name in out:
                if i < counts[name]:
                    await sample(name)

    holder = RawHolder(path)
    try:
        with holder:
            asyncio.run(main())
    finally:
        holder.close()
        tf_native.close()
        tf_poll.close()
    return out


# ---------------------------------------------------------------------------
# report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(native_ok: bool) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    cores = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    lines = [
        f"# touchfile benchmarks — {now}",
        "",
        f"{platform.platform()}; CPU: {cpu_model()}; cores: {cores} (usable: {affinity}); "
        f"Python {platform.python_version()} ({platform.python_implementation()}); "
        f"touchfile {touchfile.__version__} ({touchfile.__file__}); "
        f"filelock {filelock.__version__}",
    ]
    if not native_ok:
        lines += ["", "**WARNING: touchfile's native wait is NOT in use; 'native' is polling.**"]
    return lines


def build_markdown(cfg: Config, res: dict[str, Any], native_ok: bool, runtime: float | None) -> str:
    unc: dict[str, Series] = res["uncontended"]
    hand: dict[str, Series] = res["handoff"]
    over: dict[str, dict[str, Series]] = res["overshoot"]
    canc: dict[str, Series] = res["cancel"]
    cpu: dict[str, Series] = res["cpu"]
    many: dict[str, Series] = res["many"]
    hand_a: dict[str, Series] = res["handoff_async"]
    canc_a: dict[str, Series] = res["cancel_async"]
    rows: list[list[str]] = []
    notes: list[str] = []

    def met(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "**NO**")

    def async_ratios(a: dict[str, Series], sync: dict[str, Series], fl_sync: str) -> list[str]:
        """Cells 'async/sync x / to AsyncFileLock x' of medians, for native, polling, filelock."""
        med_a = {k: v.stats()["median"] for k, v in a.items()}
        med_s = {k: sync[k].stats()["median"] for k in ("native", "polling")}
        med_s["filelock"] = sync[fl_sync].stats()["median"]

        def x(num: float, den: float) -> str:
            r = num / den if den else math.nan
            return "—" if math.isnan(r) else f"{r:.{3 if r < 0.1 else 2}f}x"

        fl = med_a["filelock"]
        return [f"{x(med_a[k], med_s[k])} / {x(med_a[k], fl)}" for k in ("native", "polling")] + [
            "—",
            f"{x(fl, med_s['filelock'])} / 1x",
        ]

    # 1
    def unc_cell(name: str) -> str:
        s = unc[name].stats()
        n = int(s["n"]) * int(unc[name].extra["ops_per_batch"])
        return f"{fmt_t(s['median'])} / {fmt_t(s['p99'])} (n={n})"

    rows.append(
        [
            "uncontended acquire+release, per op (median / p99 of batch means)",
            unc_cell("native"),
            unc_cell("polling"),
            unc_cell("raw"),
            unc_cell("filelock"),
            "—",
            "—",
        ]
    )
    med = {k: v.stats()["median"] for k, v in unc.items()}
    rows.append(
        [
            "uncontended: ratio to raw flock / to filelock (medians)",
            f"{med['native'] / med['raw']:.2f}x / {med['native'] / med['filelock']:.3f}x",
            f"{med['polling'] / med['raw']:.2f}x / {med['polling'] / med['filelock']:.3f}x",
            "1x",
            f"{med['filelock'] / med['raw']:.1f}x / 1x",
            "—",
            "—",
        ]
    )
    # 2
    rows.append(
        [
            "handoff latency from another process (timeout=None) "
            "[filelock: default poll_interval=50 ms]",
            cell(hand["native"].stats()),
            cell(hand["polling"].stats()),
            cell(hand["raw"].stats()),
            cell(hand["filelock_default"].stats()),
            "—",
            "—",
        ]
    )
    rows.append(
        [
            "handoff latency, deadline armed (timeout=10 s) [filelock: poll_interval=1 ms]",
            cell(hand["native_timeout"].stats()),
            "—",
            "—",
            cell(hand["filelock_1ms"].stats()),
            "—",
            "—",
        ]
    )
    # 7
    rows.append(
        [
            "asyncio handoff latency from another process (await tf.acquire_async()) "
            "[filelock: AsyncFileLock, default poll_interval=50 ms]",
            cell(hand_a["native"].stats()),
            cell(hand_a["polling"].stats()),
            "—",
            cell(hand_a["filelock"].stats()),
            "—",
            "—",
        ]
    )
    rows.append(
        [
            "asyncio handoff: ratio to the sync handoff / to AsyncFileLock (medians)",
            *async_ratios(hand_a, hand, "filelock_default"),
            "—",
            "—",
        ]
    )
    # 3
    for key, row in over.items():
        s = row["native"].stats()
        ok = None if not s["n"] else s["p99"] < MS and not row["native"].errors
        rows.append(
            [
                f"deadline overshoot, {key.replace('T=', 'timeout ')}",
                cell(s),
                cell(row["polling"].stats()),
                "—",
                cell(row["filelock"].stats()),
                "native p99 < 1 ms",
                met(ok),
            ]
        )
    # 4
    s = canc["native"].stats()
    rows.append(
        [
            "cancel latency (ctx.cancel() → LockCancelled) "
            "[filelock: cancel_check polled every 50 ms]",
            cell(s),
            cell(canc["polling"].stats()),
            "—",
            cell(canc["filelock"].stats()),
            "native p99 < 1 ms",
            met(None if not s["n"] else s["p99"] < MS and not canc["native"].errors),
        ]
    )
    # 8
    rows.append(
        [
            "asyncio cancel latency (task.cancel() → the task's except CancelledError) "
            "[filelock: AsyncFileLock]",
            cell(canc_a["native"].stats()),
            cell(canc_a["polling"].stats()),
            "—",
            cell(canc_a["filelock"].stats()),
            "—",
            "—",
        ]
    )
    rows.append(
        [
            "asyncio cancel: ratio to the sync cancel / to AsyncFileLock (medians)",
            *async_ratios(canc_a, canc, "filelock"),
            "—",
            "—",
        ]
    )

    # 5
    def cpu_cell(name: str) -> str:
        series = cpu[name]
        if not series.samples:
            return "—"
        wall = float(series.extra["wall_s"])
        scaled = "" if abs(wall - 10.0) < 0.5 else f", measured over {wall:.1f} s and scaled"
        return f"{series.samples[0] * 1000:.2f} ms{scaled}"

    native_cpu = cpu["native"].samples[0] if cpu["native"].samples else math.nan
    rows.append(
        [
            "CPU while waiting on a held lock, per 10 s of waiting (whole process)",
            cpu_cell("native"),
            cpu_cell("polling"),
            "—",
            cpu_cell("filelock"),
            "native < 5 ms",
            met(None if math.isnan(native_cpu) else native_cpu < 5 * MS),
        ]
    )

    # 6
    def many_cell(name: str) -> str:
        if name not in many:
            return "not run" if name == "polling" else "—"
        series = many[name]
        s = series.stats()
        if not s["n"]:
            return "no samples"
        return (
            f"{fmt_t(s['median'])} / {fmt_t(s['p99'])} / max {fmt_t(s['max'])}; "
            f"{series.extra['later_than_5ms']} of {int(s['n'])} later than 5 ms; "
            f"CPU {series.extra['cpu_user_s'] + series.extra['cpu_sys_s']:.2f} s "
            f"({series.extra['cpu_sys_s']:.2f} s system), "
            f"{series.extra['voluntary_ctx_switches']} context switches"
        )

    m = many["native"]
    rows.append(
        [
            f"{m.extra['threads']} threads waiting at once, deadlines 0.5..1.5 s: "
            "lateness median / p99 / max; CPU of the whole section",
            many_cell("native"),
            many_cell("polling"),
            "control, time.sleep() to the deadline: " + many_cell("control"),
            "—",
            "all within 5 ms",
            met(
                len(m.samples) == m.extra["threads"]
                and m.extra["later_than_5ms"] == 0
                and m.extra["early"] == 0
                and not m.errors
            ),
        ]
    )

    columns = [
        "figure",
        "touchfile (native)",
        "touchfile (polling)",
        "floor (raw fcntl.flock)",
        "filelock",
        "target",
        "met?",
    ]
    lines = [*header(native_ok), "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]

    # notes: method, and anything that went wrong
    notes.append(
        "Times are median / p99 (n samples); µs below 1 ms. Uncontended: "
        f"{cfg.unc_batches} interleaved batches of {cfg.unc_ops} ops "
        f"({cfg.unc_ops_filelock} for filelock), p99 over batch means."
    )
    notes.append(
        "Handoff: holder in a spawned process releases 20 ms + random 0-10 ms (0-50 ms for "
        "filelock's 50 ms poll, so polling is not phase-locked) after our waiter called "
        "acquire; latency = waiter's time.monotonic() after acquire returned minus holder's "
        "just before flock(LOCK_UN). Rounds interleaved round-robin."
    )
    notes.append(
        "Overshoot/cancel/CPU/many: lock held by a raw flock() on a separate open file "
        "description in this process; waiters in worker threads (CPU: main thread)."
    )
    notes.append(
        "asyncio (measured last, each contender with fresh lock objects in one asyncio.run()): "
        "handoff as above, the waiter being the loop's task awaiting acquire_async() / "
        "AsyncFileLock.acquire(), after one warm-up round each; cancel: a task awaits the "
        "lock held as above (timeout=30 s), is cancelled 5-7 ms later, latency = "
        "time.monotonic() in its except CancelledError minus just before task.cancel(). "
        "Ratios are of medians, async over sync (filelock's sync cancel is its polled "
        "cancel_check, so that ratio compares different mechanisms)."
    )
    for label, group in (("handoff", hand), ("asyncio handoff", hand_a)):
        for name, series in group.items():
            d = series.extra.get("discarded_not_blocked", 0)
            if d:
                notes.append(f"{label} {name}: {d} round(s) discarded (waiter not surely blocked).")
    for name, series in cpu.items():
        threads = series.extra.get("python_threads", 1)
        if threads != 1:
            notes.append(f"CPU {name}: {threads} Python threads alive during the measurement.")
    for name, series in many.items():
        if series.extra.get("gc_collections"):
            notes.append(
                f"many waiters ({name}): {series.extra['gc_collections']} garbage collections "
                f"ran during the waits, longest pause "
                f"{fmt_t(series.extra['gc_longest_pause_s'])} (all threads stop meanwhile)."
            )
    if m.extra.get("early"):
        notes.append(f"many waiters: {m.extra['early']} timed out BEFORE their deadline.")
    for section, data in res.items():
        if section == "meta":
            continue
        groups = data.items() if section == "overshoot" else [("", data)]
        for key, group in groups:
            for name, series in group.items():
                if series.errors:
                    uniq = sorted(set(series.errors))
                    more = f" (+{len(uniq) - 3} more kinds)" if len(uniq) > 3 else ""
                    notes.append(
                        f"**ERROR** {section} {key} {name}: {len(series.errors)} error(s): "
                        + "; ".join(uniq[:3])
                        + more
                    )
    load: dict[str, dict[str, float]] = res["meta"].get("load", {})
    if load:
        notes.append(
            "Load from OTHER processes during each section, average cores busy (VM steal): "
            + ", ".join(
                f"{k} {v['other_cores']:.2f} ({v['steal_cores']:.2f})" for k, v in load.items()
            )
            + f" — of {os.cpu_count()} cores. High values mean noisy figures."
        )
    if runtime is not None:
        notes.append(f"Total runtime: {runtime:.1f} s{' (--quick)' if cfg.quick else ''}.")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _no_nan(x: Any) -> Any:
    """NaN (an empty summary) becomes null, so the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def results_json(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, data in res.items():
        if section == "meta":
            out[section] = data
        elif section == "overshoot":
            out[section] = {k: {n: s.to_json() for n, s in g.items()} for k, g in data.items()}
        else:
            out[section] = {n: s.to_json() for n, s in data.items()}
    return out


# ---------------------------------------------------------------------------
# main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    t_start = time.monotonic()

    tmpdir = tempfile.mkdtemp(prefix="touchfile-bench-")
    path = os.path.join(tmpdir, "bench.lock")
    tf_native = make_touchfile(path, native=True)
    tf_poll = make_touchfile(path, native=False)
    native_ok = tf_native.native
    if not native_ok:
        log("warning: touchfile's native wait is not available; 'native' figures will poll")
    if tf_poll.native:
        log("warning: TOUCHFILE_NATIVE=0 did not give a polling TouchFile")
    common = (cfg, path, tf_native, tf_poll)
    res: dict[str, Any] = {
        "meta": {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version,
            "touchfile": touchfile.__version__,
            "touchfile_path": touchfile.__file__,
            "filelock": filelock.__version__,
            "native": native_ok,
            "polling_is_native": tf_poll.native,
            "config": asdict(cfg),
            "units": "seconds (uncontended: seconds per acquire+release; cpu: CPU s per 10 s)",
        }
    }
    load: dict[str, dict[str, float]] = {}
    res["meta"]["load"] = load
    res["meta"]["loadavg_start"] = os.getloadavg()

    def run(key: str, title: str, fn: Callable[[], Any]) -> None:
        log(f"{len(load) + 1}/8 {title} ...")
        meter = LoadMeter()
        res[key] = fn()
        load[key] = meter.read()

    def many() -> dict[str, Series]:
        out = {"control": bench_many(path, None, cfg.many_n)}
        out["native"] = bench_many(path, tf_native, cfg.many_n)
        if cfg.many_polling:
            out["polling"] = bench_many(path, tf_poll, cfg.many_n)
        return out

    try:
        run("uncontended", "uncontended acquire+release", lambda: bench_uncontended(*common))
        run("handoff", "handoff latency", lambda: bench_handoff(*common))
        run("overshoot", "deadline overshoot", lambda: bench_overshoot(*common))
        run("cancel", "cancel latency", lambda: bench_cancel(*common))
        run("cpu", f"CPU while waiting ({cfg.cpu_native_s:g} s native)", lambda: bench_cpu(*common))
        run("many", f"{cfg.many_n} waiters at once", many)
        run("handoff_async", "asyncio handoff latency", lambda: bench_handoff_async(cfg, path))
        run("cancel_async", "asyncio cancel latency", lambda: bench_cancel_async(cfg, path))
    finally:
        tf_native.close()
        tf_poll.close()
        shutil.rmtree(tmpdir, ignore_errors=True)

    runtime = time.monotonic() - t_start
    res["meta"]["runtime_s"] = runtime
    md = build_markdown(cfg, res, native_ok, runtime)
    sys.stdout.write(md)
    sys.stdout.flush()

    data = results_json(res)
    data["markdown"] = md
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    stem += "-quick" if cfg.quick else ""
    (RESULTS_DIR / f"{stem}.md").write_text(md, encoding="utf-8")
    text = json.dumps(_no_nan(data), indent=1, allow_nan=False) + "\n"
    (RESULTS_DIR / f"{stem}.json").write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    log(f"wrote {RESULTS_DIR / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
