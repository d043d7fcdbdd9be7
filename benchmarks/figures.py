"""The measurements. Each returns {case: {contender: Series}}, contenders interleaved.

Waiters in this process are the contender's own lock objects; holders,
hammers, readers and the writer are worker processes using the same library.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import filelock

from benchmarks import workers
from benchmarks.contenders import BY_KEY, Contender, Lock, TouchFileLock, lock_path
from benchmarks.stats import Series

Figure = dict[str, dict[str, Series]]


@dataclass(frozen=True)
class Config:
    quick: bool
    unc_batches: int  # figure 1
    unc_ops: int
    handoff_rounds: int  # figure 2 (and its asyncio twin)
    handoff_rounds_slow: int  # contenders that sleep 50 ms or more between tries
    overshoot_n: int  # figure 3, per timeout
    overshoot_together: int  # figure 3, 100 ms waits at once
    cancel_n: int  # figure 4 (and its asyncio twin)
    cancel_n_slow: int  # figure 4, contenders that poll every 50 ms or more
    rounds: int  # figures 5, 6 and 7: interleaved rounds of each contender
    cpu_wait: float  # figure 5, per round
    hammer_s: float  # figure 6, per round
    rw_s: float  # figure 7, per round
    rw_cap: float
    waiters: tuple[int, ...]  # figure 8
    cli_runs: int  # figure 9
    c_batches: int  # figure 0: the core in plain C (benchmarks/floor.c)
    c_handoffs: int
    c_waits: int
    c_waits_slow: int  # its 10 ms deadlines


FULL = Config(
    quick=False,
    unc_batches=15,
    unc_ops=20_000,
    handoff_rounds=36,
    handoff_rounds_slow=8,
    overshoot_n=200,
    overshoot_together=12,
    cancel_n=200,
    cancel_n_slow=60,
    rounds=3,
    cpu_wait=0.35,
    hammer_s=0.1,
    rw_s=0.95,
    rw_cap=0.5,
    waiters=(1, 10, 100, 1000),
    cli_runs=20,
    c_batches=10,
    c_handoffs=16,
    c_waits=100,
    c_waits_slow=40,
)
QUICK = Config(
    quick=True,
    unc_batches=3,
    unc_ops=2_000,
    handoff_rounds=4,
    handoff_rounds_slow=2,
    overshoot_n=4,
    overshoot_together=2,
    cancel_n=5,
    cancel_n_slow=3,
    rounds=1,
    cpu_wait=0.3,
    hammer_s=0.1,
    rw_s=0.5,
    rw_cap=0.25,
    waiters=(1, 10, 100),
    cli_runs=3,
    c_batches=3,
    c_handoffs=3,
    c_waits=5,
    c_waits_slow=3,
)
HAMMERS = (1, 2, 4, 16)  # figure 6: how many processes
READERS = 8  # figure 7
NOTES: list[str] = []  # for the report: a figure left out, and why


def _not_a_lock(path: str, rw: bool = False) -> Lock:
    raise TypeError("time.sleep() is not a lock")


# The floor of the deadline figures: time.sleep() to the same deadline.
SLEEP = Contender("floor", "floor: time.sleep()", _not_a_lock, 0)


class _EventWait:
    """The floor of the cancel figure, not a lock: a thread blocked in
    threading.Event.wait(), woken by set(), Python's cheapest wake-up of a
    blocked thread."""

    def acquire(
        self, timeout: float | None = None, shared: bool = False, cancel: Any = None
    ) -> bool:
        cancel.wait(timeout)
        return False

    def release(self) -> None:
        pass

    def loop(self, n: int) -> None:
        raise TypeError("threading.Event is not a lock")

    def canceller(self) -> tuple[Any, Callable[[], None]]:
        event = threading.Event()
        return event, event.set

    def close(self) -> None:
        pass


WAKE = Contender("floor", "floor: threading.Event", lambda p, rw=False: _EventWait(), 0)


@dataclass
class Bench:
    cfg: Config
    dir: str
    everyone: list[Contender]
    pool: list[workers.Worker]
    rng: random.Random
    figure: str = ""  # the one being measured

    @property
    def contenders(self) -> list[Contender]:
        """The contenders that take part in this figure."""
        return [c for c in self.everyone if not c.only or self.figure in c.only]

    def path(self, key: str) -> str:
        return lock_path(self.dir, key)

    def those(self, pick: Callable[[Contender], bool]) -> list[Contender]:
        return [c for c in self.contenders if pick(c)]

    def shuffled(self, contenders: list[Contender]) -> list[Contender]:
        """A new order for each round, so that no contender always runs first or last."""
        return self.rng.sample(contenders, len(contenders))

    @contextmanager
    def held(self, keys: list[str]) -> Iterator[None]:
        """The first worker holds these contenders' locks meanwhile."""
        holder = self.pool[0]
        for key in keys:
            holder.call(workers.hold, key, self.path(key))
        try:
            yield
        finally:
            for key in keys:
                holder.call(workers.release, key, self.path(key))


def _takes_round(rnd: int, n: int, total: int) -> bool:
    """Whether a contender with n rounds of total takes round rnd (-1: the
    warm-up, which all take): its rounds spread evenly over the run."""
    return rnd < 0 or rnd * n // total != (rnd + 1) * n // total


def _in_thread(fn: Callable[[], None], series: Series, limit: float) -> None:
    th = threading.Thread(target=fn, daemon=True)
    th.start()
    th.join(limit)
    if th.is_alive():
        series.errors.append(f"waiter still blocked after {limit:.0f} s (hang)")


# 0 ------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def c_floor(b: Bench) -> Figure:
    """touchfile's native core with no Python around it (benchmarks/floor.c, built
    with _native/touchfile.c), each case beside the cheapest thing of its kind in
    plain C: a flock() pair against tf_try() (the lock and the path check) and
    an unlock; a blocking flock() against tf_wait() taking a lock another
    process releases; a condition variable's wake-up against tf_wait() ended
    by tf_cancel(); clock_nanosleep() against tf_wait() ended by its
    deadline. What touchfile's Python adds is the rest. Left out, with a
    note, where no C compiler is found.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        NOTES.append("No C compiler (cc): figure 0, the core in plain C, is left out.")
        return {}
    exe = os.path.join(b.dir, "floor")
    native = os.path.join(ROOT, "_native")
    subprocess.run(
        [cc, "-O2", "-pthread", f"-I{native}", '-DTF_VERSION="floor"', "-o", exe,
         os.path.join(ROOT, "benchmarks", "floor.c"), os.path.join(native, "touchfile.c")],
        check=True,
    )  # fmt: skip
    path = b.path("c_floor")
    open(path, "a").close()
    cfg = b.cfg
    runs = {
        "uncontended": ["uncontended", path, str(cfg.c_batches), str(cfg.unc_ops)],
        "handoff": ["handoff", path, str(cfg.c_handoffs)],
        "cancel": ["cancel", path, str(cfg.c_waits)],
        "deadline 1 ms": ["deadline", path, str(cfg.c_waits), "1"],
        "deadline 10 ms": ["deadline", path, str(cfg.c_waits_slow), "10"],
    }
    out: Figure = {}
    for case, args in runs.items():
        done = subprocess.run([exe, *args], capture_output=True, text=True, check=True)
        out[case] = {name: Series(samples) for name, samples in json.loads(done.stdout).items()}
    return out


# 1 ------------------------------------------------------------------------------------------


def uncontended(b: Bench) -> Figure:
    """Acquire+release pairs on a free lock, in batches; samples are each batch's mean."""
    locks = {c.key: c.make(b.path(c.key)) for c in b.contenders}
    out: dict[str, Series] = {}
    ops: dict[str, int] = {}
    for key, lock in locks.items():  # warm up, and size batches to about 20 ms
        lock.loop(50)
        t0 = time.perf_counter()
        lock.loop(200)
        per_op = (time.perf_counter() - t0) / 200
        ops[key] = max(100, min(b.cfg.unc_ops, int(0.02 / per_op)))
        out[key] = Series(extra={"ops_per_batch": ops[key]})
    gc_was = gc.isenabled()
    gc.disable()  # as timeit does
    try:
        for _ in range(b.cfg.unc_batches):
            for key, lock in locks.items():
                t0 = time.perf_counter()
                lock.loop(ops[key])
                out[key].samples.append((time.perf_counter() - t0) / ops[key])
    finally:
        if gc_was:
            gc.enable()
        for lock in locks.values():
            lock.close()
    return {"": out}


# 2 ------------------------------------------------------------------------------------------


def handoff(b: Bench) -> Figure:
    """A worker holds, then releases 20 ms + jitter later; the time until our waiter holds.

    The jitter spans the contender's poll period, so that polling is not
    phase-locked to the release. Contenders that poll every 50 ms or more take
    fewer rounds, spread over the run. A first round (which starts
    touchfile's scheduler thread, say) is not recorded; neither are rounds
    where the waiter may not have been blocked yet.
    """
    holder = b.pool[0]
    locks = {c.key: c.make(b.path(c.key)) for c in b.contenders}
    out = {c.key: Series(extra={"dropped_not_blocked": 0}) for c in b.contenders}
    total = b.cfg.handoff_rounds
    for rnd in range(-1, total):
        for c in b.shuffled(b.contenders):
            n = total if c.poll < 0.05 else b.cfg.handoff_rounds_slow
            if not _takes_round(rnd, n, total):
                continue
            path, series, lock = b.path(c.key), out[c.key], locks[c.key]
            holder.call(workers.hold, c.key, path)
            holder.submit(
                workers.release_after, c.key, path, 0.02 + b.rng.uniform(0, max(0.01, c.poll))
            )
            t_call = time.monotonic()
            granted = lock.acquire(timeout=None if c.key == "floor" else 30)
            t_held = time.monotonic()
            if granted:
                lock.release()
            t_release = holder.result()
            if rnd < 0:
                pass  # the warm-up
            elif not granted:
                series.errors.append("timed out after 30 s")
            elif t_release - t_call < 0.01:
                series.extra["dropped_not_blocked"] += 1
            elif t_held < t_release:
                series.errors.append("held the lock BEFORE the holder released it")
            else:
                series.samples.append(t_held - t_release)
    for lock in locks.values():
        lock.close()
    return {"": out}


# 3 ------------------------------------------------------------------------------------------


def _late_sample(lock: Lock | None, timeout: float, series: Series) -> None:
    """One wait in a fresh thread on a held lock (lock=None: time.sleep): how late it ended."""

    def run() -> None:
        start = time.monotonic()
        try:
            if lock is None:
                time.sleep(timeout)
                granted = False
            else:
                granted = lock.acquire(timeout=timeout)
        except Exception as e:
            series.errors.append(f"{type(e).__name__}: {e}")
            return
        late = time.monotonic() - (start + timeout)
        if lock is not None and granted:
            lock.release()
            series.errors.append("acquired a lock another process holds")
        else:
            series.samples.append(late)

    _in_thread(run, series, timeout + 30)


def overshoot(b: Bench) -> Figure:
    """A waiter in a worker thread, timeouts 1, 10 and 100 ms, on a lock held throughout.

    The floor column is time.sleep(timeout) in a worker thread: what the
    machine and the interpreter add to any wake-up. Waits of 1 and 10 ms are
    one at a time; of 100 ms, overshoot_together of one contender at once,
    started (so ending) 8 ms apart, as in figure 8: overshoot_n samples of
    each would take minutes one at a time.
    """
    timed = b.those(lambda c: c.deadline)
    locks = {c.key: c.make(b.path(c.key)) for c in timed}
    out: Figure = {}
    with b.held([c.key for c in timed]):
        for timeout in (0.001, 0.010, 0.100):
            case = out[f"{timeout * 1000:g} ms"] = {"floor": Series(extra={"floor": "time.sleep"})}
            case.update({c.key: Series() for c in timed})
            k = 1 if timeout < 0.1 else b.cfg.overshoot_together
            for _ in range(-(-b.cfg.overshoot_n // k)):
                for c in b.shuffled([SLEEP, *timed]):
                    if k == 1:
                        _late_sample(None if c is SLEEP else locks[c.key], timeout, case[c.key])
                        continue
                    batch = _wait_together(
                        None if c is SLEEP else c, b.path(c.key), k, timeout, 0.008
                    )
                    case[c.key].samples += batch.samples
                    case[c.key].errors += batch.errors
    for lock in locks.values():
        lock.close()
    return out


# 4 ------------------------------------------------------------------------------------------


def cancel(b: Bench) -> Figure:
    """A worker thread waits (timeout 30 s) on a held lock; we cancel it 5-7 ms later.

    The floor column is a thread blocked in threading.Event.wait(), woken by
    set(): what the machine and the interpreter add to any wake-up.

    Latency runs from just before the cancel call to just after the waiter's
    acquire returned. Only contenders with a way to cancel a wait take part
    (filelock's is a cancel_check callable it polls); the delay before the
    cancel spans the contender's poll period, so that its polling is not
    phase-locked to the cancel. Contenders that poll every 50 ms or more take
    fewer rounds, spread over the run. The first round is not recorded.
    """
    cancellable = b.those(lambda c: c.cancel)
    locks = {c.key: c.make(b.path(c.key)) for c in [WAKE, *cancellable]}
    out = {c.key: Series() for c in [WAKE, *cancellable]}
    out["floor"].extra["floor"] = "threading.Event"
    with b.held([c.key for c in cancellable]):
        total = b.cfg.cancel_n
        for rnd in range(-1, total):
            for c in b.shuffled([WAKE, *cancellable]):
                n = total if c.poll < 0.05 else b.cfg.cancel_n_slow
                if not _takes_round(rnd, n, total):
                    continue
                series, lock = out[c.key], locks[c.key]
                token, fire = lock.canceller()
                ready = threading.Event()
                ended: list[tuple[float, bool]] = []

                def run(
                    lock: Lock = lock,
                    token: Any = token,
                    ready: threading.Event = ready,
                    ended: list[Any] = ended,
                ) -> None:
                    ready.set()
                    granted = lock.acquire(timeout=30, cancel=token)
                    ended.append((time.monotonic(), granted))
                    if granted:
                        lock.release()

                th = threading.Thread(target=run, daemon=True)
                th.start()
                ready.wait(10)
                time.sleep(0.005 + b.rng.uniform(0, max(0.002, c.poll)))
                t0 = time.monotonic()
                fire()
                th.join(35)
                if rnd < 0:
                    pass  # the warm-up
                elif th.is_alive() or not ended:
                    series.errors.append("waiter still blocked 35 s after cancel (hang)")
                elif ended[0][1]:
                    series.errors.append("acquired a lock another process holds")
                else:
                    series.samples.append(ended[0][0] - t0)
    for lock in locks.values():
        lock.close()
    return {"": out}


# 5 ------------------------------------------------------------------------------------------


def cpu(b: Bench) -> Figure:
    """CPU seconds this whole process burns per second of waiting on a held lock.

    The waiter is the main thread (the floor's timeout is a SIGALRM timer).
    """
    out = {c.key: Series(extra={"cpu_s": [], "wall_s": []}) for c in b.contenders}
    with b.held([c.key for c in b.contenders]):
        for _ in range(b.cfg.rounds):
            for c in b.shuffled(b.contenders):
                lock = c.make(b.path(c.key))
                series = out[c.key]
                gc.collect()
                c0, w0 = time.process_time(), time.monotonic()
                if lock.acquire(timeout=b.cfg.cpu_wait):
                    lock.release()
                    series.errors.append("acquired a lock another process holds")
                used, wall = time.process_time() - c0, time.monotonic() - w0
                series.extra["cpu_s"].append(used)
                series.extra["wall_s"].append(wall)
                series.samples.append(used / wall)
                lock.close()
    return {"": out}


# 6 ------------------------------------------------------------------------------------------


def throughput(b: Bench) -> Figure:
    """N worker processes take and release one exclusive lock back to back for a fixed time.

    Samples: acquisitions per second, one per round; extra: handovers per
    second (the holder changed) and each process's share of the
    acquisitions, over all rounds.
    """
    board = os.path.join(b.dir, "board")
    out: Figure = {}
    for n in HAMMERS:
        case = out[f"N={n}"] = {c.key: Series(extra={"counts": [0] * n}) for c in b.contenders}
        handovers = dict.fromkeys(case, 0)
        for _ in range(b.cfg.rounds):
            for c in b.shuffled(b.contenders):
                with open(board, "wb") as f:
                    f.write(bytes(8))
                start = time.monotonic() + 0.05
                end = start + b.cfg.hammer_s
                for i, w in enumerate(b.pool[:n]):
                    w.submit(workers.hammer, c.key, b.path(c.key), board, i + 1, start, end)
                results = [w.result() for w in b.pool[:n]]
                series = case[c.key]
                series.samples.append(sum(r[0] for r in results) / b.cfg.hammer_s)
                series.extra["counts"] = [x + r[0] for x, r in zip(series.extra["counts"], results)]
                handovers[c.key] += max(0, sum(r[1] for r in results) - 1)
        for key, series in case.items():
            counts = series.extra["counts"]
            shares = [x / sum(counts) if sum(counts) else 0.0 for x in counts]
            series.extra.update(
                handovers_per_s=handovers[key] / (b.cfg.rounds * b.cfg.hammer_s),
                min_share=min(shares),
                max_share=max(shares),
            )
    return out


# 7 ------------------------------------------------------------------------------------------


def readers_writer(b: Bench) -> Figure:
    """8 reader processes (shared holds of 1 ms, 1 ms apart) and 1 writer process.

    The writer tries every 10 ms, giving up after rw_cap seconds (starved),
    for rw_s seconds; the readers go on until its last try ended. Samples are
    its waits, starved ones included. Readers flag their holds on a shared board, which
    the writer checks while it holds. filelock's entry is its ReadWriteLock
    (SQLite); its FileLock has no shared mode.
    """
    shared = b.those(lambda c: c.shared)
    out = {
        c.key: Series(extra={"starved": 0, "tries": 0, "reads": 0, "seconds": 0.0}) for c in shared
    }
    writer, readers = b.pool[0], b.pool[1 : 1 + READERS]
    board = os.path.join(b.dir, "flags")
    for _ in range(b.cfg.rounds):
        for c in b.shuffled(shared):
            with open(board, "wb") as f:
                f.write(bytes(READERS + 1))  # a byte per reader, and the writer's "done"
            path, series = b.path(c.key), out[c.key]
            start = time.monotonic() + 0.05
            end = start + b.cfg.rw_s
            for i, r in enumerate(readers):
                r.submit(workers.reader, c.key, path, board, i, start, 0.001, 0.001)
            writer.submit(workers.writer, c.key, path, board, start, end, 0.001, 0.01, b.cfg.rw_cap)
            waits, overlaps = writer.result()
            series.extra["reads"] += sum(r.result() for r in readers)
            series.samples += [w for w, _ in waits]
            series.extra["starved"] += sum(not granted for _, granted in waits)
            series.extra["tries"] += len(waits)
            series.extra["seconds"] += b.cfg.rw_s
            if overlaps:
                series.errors.append(f"the writer held beside a reader {overlaps} time(s)")
    return {"": out}


# 8 ------------------------------------------------------------------------------------------


def many_waiters(b: Bench) -> Figure:
    """1..1000 threads wait at once, each on its own lock object, for a lock held throughout.

    Their deadlines are 1 ms apart from 200 ms on, so waits end at the same
    rate whatever their number. Samples: how late each wait ended. The floor
    column is time.sleep() to the same deadlines.
    """
    timed = b.those(lambda c: c.deadline)
    out: Figure = {}
    old_stack = threading.stack_size(256 * 1024)
    try:
        with b.held([c.key for c in timed]):
            for n in b.cfg.waiters:
                case: dict[str, Series] = {}
                for c in b.shuffled([SLEEP, *timed]):
                    lock = None if c is SLEEP else c
                    case[c.key] = _wait_together(lock, b.path(c.key), n)
                out[f"{n} waiter{'s' if n > 1 else ''}"] = {
                    c.key: case[c.key] for c in [SLEEP, *timed]
                }
    finally:
        threading.stack_size(old_stack)
    return out


def _wait_together(
    c: Contender | None, path: str, n: int, timeout: float | None = None, gap: float = 0.001
) -> Series:
    """n waits at once, each with a lock object of its own, their deadlines gap
    apart: waits of 0.2 s + i * gap, or with timeout given, waits of timeout
    that start i * gap apart."""
    series = Series(extra={"floor": "time.sleep"} if c is None else {})
    late: list[float] = []
    locks = [c.make(path) for _ in range(n)] if c is not None else []
    barrier = threading.Barrier(n + 1)

    def run(i: int) -> None:
        barrier.wait(60)
        if timeout is None:
            wait = 0.2 + gap * i
        else:
            time.sleep(gap * i)
            wait = timeout
        start = time.monotonic()
        try:
            if c is None:
                time.sleep(wait)
                granted = False
            else:
                granted = locks[i].acquire(timeout=wait)
        except Exception as e:
            series.errors.append(f"{type(e).__name__}: {e}")
            return
        late.append(time.monotonic() - (start + wait))
        if granted:
            locks[i].release()
            series.errors.append("acquired a lock another process holds")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    barrier.wait(60)
    t0 = time.monotonic()
    for th in threads:
        th.join(max(0.1, t0 + 60 - time.monotonic()))
    hung = sum(th.is_alive() for th in threads)
    if hung:
        series.errors.append(f"{hung} waits still blocked 60 s after the start (hang)")
    for lock in locks:
        lock.close()
    series.samples = late
    series.extra["later_than_5ms"] = sum(x > 0.005 for x in late)
    series.extra["wall_s"] = time.monotonic() - t0
    return series


# 9 ------------------------------------------------------------------------------------------


def command_line(b: Bench) -> Figure:
    """Wall time of `touchfile -w 1 L -- true` against `flock -w 1 L true`, lock free.

    Also `python -c pass`: the interpreter's own start, which touchfile's
    command cannot go below.
    """
    path = b.path("cli")
    exe = os.path.join(os.path.dirname(sys.executable), "touchfile")
    touchfile_cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "touchfile"]
    commands = {
        "native": [*touchfile_cmd, "-w", "1", path, "--", "true"],
        "python": [sys.executable, "-c", "pass"],
    }
    flock = shutil.which("flock")
    if flock:
        commands["floor"] = [flock, "-w", "1", path, "true"]
    out = {key: Series(extra={"command": " ".join(cmd)}) for key, cmd in commands.items()}
    if "floor" in out:
        out["floor"].extra["floor"] = "flock(1)"
    for _ in range(b.cfg.cli_runs + 1):  # the first round warms caches and is dropped
        for key, cmd in commands.items():
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, cwd=b.dir, check=False).returncode
            elapsed = time.perf_counter() - t0
            if rc:
                out[key].errors.append(f"exit status {rc}")
            out[key].samples.append(elapsed)
    for series in out.values():
        series.samples.pop(0)
    return {"": out}


# asyncio twins of 2 and 4 -------------------------------------------------------------------


class _AsyncLock:
    """An asyncio waiter: touchfile's acquire_async() or filelock's AsyncFileLock."""

    def __init__(self, key: str, path: str) -> None:
        self.tf = TouchFileLock(path, key == "native").tf if key != "filelock" else None
        self.fl = filelock.AsyncFileLock(path) if key == "filelock" else None

    async def acquire(self, timeout: float) -> None:
        if self.tf is not None:
            await self.tf.acquire_async(timeout=timeout)
        else:
            assert self.fl is not None
            await self.fl.acquire(timeout=timeout)

    async def release(self) -> None:
        if self.tf is not None:
            self.tf.release()
        else:
            assert self.fl is not None
            await self.fl.release()


def asyncio_twins(b: Bench) -> dict[str, Figure]:
    """Handoff and cancel latency for an asyncio task awaiting the lock.

    touchfile (native, polling) against filelock's AsyncFileLock (default
    50 ms poll). Cancel: task.cancel() -> the task's `except CancelledError`.
    """
    keys: list[str] = [k for k in ("native", "polling", "filelock") if BY_KEY[k] in b.contenders]
    hand = {k: Series(extra={"dropped_not_blocked": 0}) for k in keys}
    canc = {k: Series() for k in keys}
    holder = b.pool[0]

    async def main() -> None:
        locks = {k: _AsyncLock(k, b.path(k)) for k in keys}
        for k in keys:  # warm up: the first wait may start a thread
            await locks[k].acquire(1)
            await locks[k].release()
        for rnd in range(b.cfg.handoff_rounds):
            for k in keys:
                c = BY_KEY[k]
                if c.poll >= 0.05 and rnd >= b.cfg.handoff_rounds_slow:
                    continue
                holder.call(workers.hold, k, b.path(k))
                holder.submit(
                    workers.release_after, k, b.path(k), 0.02 + b.rng.uniform(0, max(0.01, c.poll))
                )
                t_call = time.monotonic()
                await locks[k].acquire(30)
                t_held = time.monotonic()
                await locks[k].release()
                t_release = holder.result()  # blocks the loop: nothing else runs on it
                if t_release - t_call < 0.01:
                    hand[k].extra["dropped_not_blocked"] += 1
                elif t_held < t_release:
                    hand[k].errors.append("held the lock BEFORE the holder released it")
                else:
                    hand[k].samples.append(t_held - t_release)
        for k in keys:
            holder.call(workers.hold, k, b.path(k))
        try:
            for _ in range(b.cfg.cancel_n):
                for k in keys:
                    await _cancel_task(locks[k], canc[k], b.rng)
        finally:
            for k in keys:
                holder.call(workers.release, k, b.path(k))
        for lock in locks.values():
            if lock.tf is not None:
                lock.tf.close()

    asyncio.run(main())
    return {"asyncio handoff": {"": hand}, "asyncio cancel": {"": canc}}


async def _cancel_task(lock: _AsyncLock, series: Series, rng: random.Random) -> None:
    caught: list[float] = []

    async def waiter() -> None:
        try:
            await lock.acquire(30)
        except asyncio.CancelledError:
            caught.append(time.monotonic())
            raise
        await lock.release()
        series.errors.append("acquired a lock another process holds")

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.005 + rng.uniform(0, 0.002))
    t0 = time.monotonic()
    task.cancel()
    try:
        await asyncio.wait_for(task, 35)
    except asyncio.CancelledError:
        pass
    except asyncio.TimeoutError:
        series.errors.append("task still waiting 35 s after cancel (hang)")
    if caught:
        series.samples.append(caught[0] - t0)
