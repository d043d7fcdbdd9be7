"""The PostgreSQL figures: touchfile.postgres against raw psycopg 3 and its peers.

The first of them starts a throwaway server (tests/pgserver.py) in the run's
temporary directory; stop() ends it, and run.py calls stop() in a finally, so
that an error or Ctrl-C stops it too (SIGTERM is turned into SystemExit
meanwhile, and the server's own atexit hook is the last resort). Every
connection goes over the server's Unix socket.

The database's default lock_timeout is set to 60 s: a wait that none of
these figures should ever reach, so that a lost wake-up in a library that
has no deadline of its own ends as an error, not a hang. It changes nothing
else: those waits still block in pg_advisory_lock().

Without a PostgreSQL server (or psycopg), the figures are left out with a
note, unless the environment variable CI is set: then the run fails.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from benchmarks.contenders import Lock
from benchmarks.figures import Bench, Figure, _late_sample
from benchmarks.pg_contenders import (
    GUARD,
    PACKAGES,
    PG_BY_KEY,
    PG_CONTENDERS,
    PgContender,
    Where,
    stop_coordinators,
)
from benchmarks.stats import Series

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


@dataclass(frozen=True)
class PgConfig:
    unc_batches: int  # P1
    unc_ops: int
    handoff_rounds: int  # P2
    overshoot_n: int  # P3, 10 ms timeout
    overshoot_n_100: int  # P3, 100 ms timeout
    overshoot_n_slow: int  # P3, each timeout, contenders that poll 0.5 s apart or more (1 s each)
    cancel_n: int  # P4
    waiters: int  # P5: threads queued at once
    waiters_rounds: int


PG_FULL = PgConfig(
    unc_batches=25,
    unc_ops=5_000,
    handoff_rounds=50,
    overshoot_n=100,
    overshoot_n_100=20,
    overshoot_n_slow=2,
    cancel_n=60,
    waiters=100,
    waiters_rounds=3,
)
PG_QUICK = PgConfig(
    unc_batches=3,
    unc_ops=500,
    handoff_rounds=4,
    overshoot_n=5,
    overshoot_n_100=2,
    overshoot_n_slow=1,
    cancel_n=5,
    waiters=20,
    waiters_rounds=1,
)

NOTES: list[str] = []  # for the report: contenders left out, a section left out
INFO: dict[str, Any] = {}  # the server's version, the packages', the config: once it ran


def config(b: Bench) -> PgConfig:
    return PG_QUICK if b.cfg.quick else PG_FULL


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Unavailable(Exception):
    """No PostgreSQL server, or no psycopg: the section cannot run here."""


@dataclass
class Section:
    server: Any  # tests/pgserver.py's Server
    where: Where
    contenders: list[PgContender]

    def name(self, key: str) -> str:
        """Each contender's lock, by name (or key: the floor's int is the name's hash)."""
        return f"touchfile-bench-{key}"


_section: Section | None = None
_old_sigterm: Any = None


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind through the finally that stops the server


def _start(b: Bench) -> Section:
    """The section's server and contenders, the server started on first use."""
    global _section, _old_sigterm
    if _section is not None:
        return _section
    try:
        import psycopg  # noqa: F401

        import touchfile.postgres  # noqa: F401
    except ImportError as e:
        raise Unavailable(
            f"touchfile.postgres cannot be imported ({e}): pip install '.[bench]'"
        ) from None
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import pgserver

    if pgserver.find_bin_dir() is None:
        raise Unavailable(
            "PostgreSQL server not installed: no initdb and pg_ctl on PATH or in "
            "/usr/lib/postgresql/*/bin (apt-get install postgresql)"
        )
    contenders = [c for c in PG_CONTENDERS if c.available()]
    NOTES.extend(
        f"{c.label} is not installed (pip install '.[bench]'): left out of the PostgreSQL figures."
        for c in PG_CONTENDERS
        if not c.available()
    )
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        _old_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    _log("starting a PostgreSQL server ...")
    server = pgserver.Server.start(b.dir)
    _section = Section(
        server, Where(server.dsn, server.host, server.port, server.user, server.dbname), contenders
    )
    # From here on, stop() ends the server whatever happens.
    server.psql(f"ALTER DATABASE {server.dbname} SET lock_timeout = '{2 * GUARD:.0f}s'")
    cfg = config(b)
    most = int(server.psql("SHOW max_connections"))
    if most < cfg.waiters + 20:
        raise RuntimeError(f"max_connections is {most}: {cfg.waiters} waiters need more")
    INFO["PostgreSQL"] = server.psql("SHOW server_version").split()[0]
    for dist in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            INFO[dist] = metadata.version(dist)
    INFO["config"] = cfg.__dict__
    return _section


def stop() -> None:
    """Stop the server, if one was started; safe twice."""
    global _section, _old_sigterm
    section, _section = _section, None
    try:
        stop_coordinators()
    finally:
        if section is not None:
            section.server.stop()
        if _old_sigterm is not None:
            signal.signal(signal.SIGTERM, _old_sigterm)
            _old_sigterm = None


def _step(fn: Callable[[Bench, Section], Figure]) -> Callable[[Bench], Figure]:
    def run(b: Bench) -> Figure:
        try:
            section = _start(b)
        except Unavailable as e:
            if os.environ.get("CI"):
                raise RuntimeError(
                    f"{e}. CI is set: the PostgreSQL figures may not be left out"
                ) from None
            note = f"{e}: the PostgreSQL figures are left out."
            if note not in NOTES:
                NOTES.append(note)
                _log(note)
            return {}
        return fn(b, section)

    run.__doc__ = fn.__doc__
    return run


def _timeout(c: PgContender) -> float | None:
    """The timeout of a wait that should not end: none for a contender whose deadline polls."""
    return GUARD if c.server_deadline else None


def _shuffled(b: Bench, contenders: list[PgContender]) -> list[PgContender]:
    return b.rng.sample(contenders, len(contenders))


def _make_all(s: Section, contenders: list[PgContender]) -> dict[str, Lock]:
    return {c.key: c.make(s.where, s.name(c.key)) for c in contenders}


def _close_all(locks: dict[str, Lock] | list[Lock]) -> None:
    for lock in locks.values() if isinstance(locks, dict) else locks:
        with contextlib.suppress(Exception):
            lock.close()


# --- in a worker process: the holder -----------------------------------------------------------

_held: dict[str, Lock] = {}  # this worker's locks, by contender
_holding: set[str] = set()


def hold(key: str, where: Where, name: str) -> float:
    """Take the contender's lock (exclusive) and keep it; when it was taken."""
    c = PG_BY_KEY[key]
    if key not in _held:
        _held[key] = c.make(where, name)
    if not _held[key].acquire(timeout=_timeout(c)):
        raise RuntimeError(f"{key}: the holder could not take {name}")
    _holding.add(key)
    return time.monotonic()


def release_after(key: str, delay: float) -> float:
    """Sleep, then release the held lock; the time just before the release."""
    time.sleep(delay)
    t = time.monotonic()
    _held[key].release()
    _holding.discard(key)
    return t


def drop() -> None:
    """Release what this worker holds and close its locks (their sessions)."""
    for key in list(_holding):
        with contextlib.suppress(Exception):
            _held[key].release()
    _holding.clear()
    _close_all(_held)
    _held.clear()
    stop_coordinators()


@contextlib.contextmanager
def _held_by_worker(b: Bench, s: Section, contenders: list[PgContender]) -> Iterator[None]:
    holder = b.pool[0]
    try:
        for c in contenders:
            holder.call(hold, c.key, s.where, s.name(c.key))
        yield
    finally:
        holder.call(drop)


# P1 -------------------------------------------------------------------------------------------


def _server_pids(server: Any) -> list[int]:
    """The server's postmaster, then its children (the sessions among them)."""
    with open(os.path.join(server.data_dir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:  # field 4: the parent
                children.append(int(entry))
    return [postmaster, *children]


def _pin(server: Any, server_cpus: set[int], our_cpus: set[int]) -> None:
    """The server's processes (sessions to come inherit it) on server_cpus, this thread on ours."""
    for pid in _server_pids(server):
        with contextlib.suppress(ProcessLookupError):  # a session that just ended
            os.sched_setaffinity(pid, server_cpus)
    os.sched_setaffinity(0, our_cpus)  # 0: the calling thread


def uncontended(b: Bench, s: Section) -> Figure:
    """Acquire+release pairs on a free lock, in batches of about 10 ms; samples: batch means.

    The floor is two statements, pg_advisory_lock() and pg_advisory_unlock():
    two round trips. Whether a session's server process runs on our CPU or
    another decides each round trip's cost (on a 2-core VM, a pair took 2-3
    times as long across CPUs), and the kernel's choice sticks to a session
    for seconds, so that unpinned medians swung 0.8-2.6x between runs: the
    server's processes and this thread are pinned, on the same CPU (the
    round trips' software path) and, given two, on two (with a wake-up
    across CPUs in each). Where pinning is not allowed (the server is
    another user's, say), one case, unpinned. The contenders' batches come
    in a new order each time: tooz's (a connection made and ended per pair)
    leave server processes exiting.
    """
    ours = os.sched_getaffinity(0)
    theirs = os.sched_getaffinity(_server_pids(s.server)[0])
    cpus = sorted(ours)
    cases = {"same CPU": ({cpus[0]}, {cpus[0]})}
    if len(cpus) > 1:
        cases["across CPUs"] = ({cpus[1]}, {cpus[0]})
    out: Figure = {}
    denied = ""
    try:
        for case, (server_cpus, our_cpus) in cases.items():
            try:
                _pin(s.server, server_cpus, our_cpus)
            except PermissionError as e:
                denied = f"could not pin the server's processes ({e})"
                break
            out[case] = _uncontended_case(b, s)
    finally:
        os.sched_setaffinity(0, ours)
        with contextlib.suppress(OSError):
            _pin(s.server, theirs, ours)
    if denied:
        out = {"unpinned": _uncontended_case(b, s)}
        for series in out["unpinned"].values():
            series.extra["unpinned"] = denied
    return out


def _uncontended_case(b: Bench, s: Section) -> dict[str, Series]:
    cfg = config(b)
    locks = _make_all(s, s.contenders)
    out: dict[str, Series] = {}
    ops: dict[str, int] = {}
    gc_was = gc.isenabled()
    try:
        for key, lock in locks.items():  # warm up (psycopg prepares after 5), size batches
            lock.loop(20)
            t0 = time.perf_counter()
            lock.loop(50)
            per_op = (time.perf_counter() - t0) / 50
            ops[key] = max(5, min(cfg.unc_ops, int(0.01 / per_op)))
            out[key] = Series(extra={"ops_per_batch": ops[key]})
        if "tooz" in out:
            out["tooz"].extra["note"] = "a new connection per acquire (release closes it)"
        gc.disable()  # as timeit does
        for _ in range(cfg.unc_batches):
            for key in b.rng.sample(list(locks), len(locks)):
                lock = locks[key]
                t0 = time.perf_counter()
                lock.loop(ops[key])
                out[key].samples.append((time.perf_counter() - t0) / ops[key])
    finally:
        if gc_was:
            gc.enable()
        _close_all(locks)
    return out


# P2 -------------------------------------------------------------------------------------------


def handoff(b: Bench, s: Section) -> Figure:
    """A worker process holds, then releases 20-30 ms later; the time until our waiter holds.

    From just before the holder's release() to just after our acquire()
    returned (time.monotonic(), which the processes share). Every contender
    waits in pg_advisory_lock(); those whose deadline polls wait without one.
    The first round is not recorded; neither are rounds where the waiter may
    not have been blocked yet.
    """
    holder = b.pool[0]
    locks = _make_all(s, s.contenders)
    out = {c.key: Series(extra={"dropped_not_blocked": 0}) for c in s.contenders}
    try:
        for rnd in range(-1, config(b).handoff_rounds):
            for c in _shuffled(b, s.contenders):
                series, lock = out[c.key], locks[c.key]
                holder.call(hold, c.key, s.where, s.name(c.key))
                holder.submit(release_after, c.key, 0.02 + b.rng.uniform(0, 0.01))
                t_call = time.monotonic()
                error = ""
                try:
                    granted = lock.acquire(timeout=_timeout(c))
                except Exception as e:
                    granted, error = False, f"{type(e).__name__}: {e}"
                t_held = time.monotonic()
                if granted:
                    lock.release()
                t_release = holder.result()
                if rnd < 0:
                    pass  # the warm-up
                elif error or not granted:
                    series.errors.append(error or f"timed out after {GUARD:.0f} s")
                elif t_release - t_call < 0.01:
                    series.extra["dropped_not_blocked"] += 1
                elif t_held < t_release:
                    series.errors.append("held the lock BEFORE the holder released it")
                else:
                    series.samples.append(t_held - t_release)
    finally:
        holder.call(drop)
        _close_all(locks)
    return {"": out}


# P3 -------------------------------------------------------------------------------------------

TIMEOUTS = (0.010, 0.100)


def overshoot(b: Bench, s: Section) -> Figure:
    """A waiter in a worker thread, timeouts 10 and 100 ms, on a lock another process holds.

    Lateness: from the call plus the timeout to its return. The floor sets
    the session's lock_timeout (when it changes) and waits. Contenders that
    poll 0.5 s apart or more take a few samples, one wait of each such
    contender at a time side by side, each in a thread and session of its
    own (so that they take seconds, not tens of them): their lateness is
    their sleep. Never two waits of one contender at once: tooz connects
    afresh in each acquire, and a try that ends after the deadline ends the
    wait without a sleep.
    """
    cfg = config(b)
    fast = [c for c in s.contenders if c.poll < 0.5]
    slow = [c for c in s.contenders if c.poll >= 0.5]
    out: Figure = {}
    for timeout in TIMEOUTS:
        out[f"{timeout * 1000:g} ms"] = {
            c.key: Series(extra={"poll_s": c.poll} if c.poll else {}) for c in s.contenders
        }
    locks = _make_all(s, fast)
    try:
        with _held_by_worker(b, s, s.contenders):
            for timeout in TIMEOUTS:
                n = cfg.overshoot_n if timeout < 0.1 else cfg.overshoot_n_100
                case = out[f"{timeout * 1000:g} ms"]
                for _ in range(n):
                    for c in _shuffled(b, fast):
                        _late_sample(locks[c.key], timeout, case[c.key])
            for timeout in TIMEOUTS if slow else ():
                case = out[f"{timeout * 1000:g} ms"]
                for _ in range(cfg.overshoot_n_slow):
                    _late_side_by_side(s, [(c, case[c.key]) for c in slow], timeout)
    finally:
        _close_all(locks)
    return out


def _late_side_by_side(s: Section, slow: list[tuple[PgContender, Series]], timeout: float) -> None:
    """One wait of each contender at once, each in a thread and a lock object of its own."""
    jobs: list[tuple[Series, float, Lock]] = []
    try:
        for c, series in slow:
            series.extra["side_by_side"] = [k.label for k, _ in slow if k is not c]
            jobs.append((series, timeout, c.make(s.where, s.name(c.key))))
        barrier = threading.Barrier(len(jobs) + 1)

        def run(series: Series, timeout: float, lock: Lock) -> None:
            barrier.wait(30)
            start = time.monotonic()
            try:
                granted = lock.acquire(timeout=timeout)
            except Exception as e:
                series.errors.append(f"{type(e).__name__}: {e}")
                return
            late = time.monotonic() - (start + timeout)
            if granted:
                lock.release()
                series.errors.append("acquired a lock another process holds")
            else:
                series.samples.append(late)

        threads = [threading.Thread(target=run, args=job, daemon=True) for job in jobs]
        for th in threads:
            th.start()
        barrier.wait(30)
        t0 = time.monotonic()
        for th in threads:
            th.join(max(0.1, t0 + 30 - time.monotonic()))
        for (series, _, _), th in zip(jobs, threads):
            if th.is_alive():
                series.errors.append("waiter still blocked after 30 s (hang)")
    finally:
        _close_all([lock for _, _, lock in jobs])


# P4 -------------------------------------------------------------------------------------------


def cancel(b: Bench, s: Section) -> Figure:
    """A worker thread waits on a lock another process holds; we cancel it 5-7 ms later.

    From just before the cancel call (touchfile: ctx.cancel(); the floor:
    conn.cancel_safe(), which returns once the server has the request) to
    just after the waiter's acquire returned; extra: how long the cancel call
    itself took. The peers have no way to cancel a wait. The first round is
    not recorded.
    """
    able = [c for c in s.contenders if not c.cancel]
    out = {c.key: Series(extra={"cannot": c.cancel} if c.cancel else {}) for c in s.contenders}
    locks = _make_all(s, able)
    try:
        with _held_by_worker(b, s, able):
            for rnd in range(-1, config(b).cancel_n):
                for c in _shuffled(b, able):
                    _cancel_once(b, locks[c.key], out[c.key], rnd < 0)
    finally:
        _close_all(locks)
    return {"": out}


def _cancel_once(b: Bench, lock: Lock, series: Series, warm_up: bool) -> None:
    token, fire = lock.canceller()
    ready = threading.Event()
    ended: list[tuple[float, bool]] = []
    failed: list[str] = []

    def run() -> None:
        ready.set()
        try:
            granted = lock.acquire(timeout=GUARD, cancel=token)
        except Exception as e:
            failed.append(f"{type(e).__name__}: {e}")
            return
        ended.append((time.monotonic(), granted))
        if granted:
            lock.release()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    ready.wait(10)
    time.sleep(0.005 + b.rng.uniform(0, 0.002))
    t0 = time.monotonic()
    fire()
    t_fired = time.monotonic()
    th.join(GUARD + 5)
    if warm_up:
        return
    series.extra.setdefault("cancel_call_s", []).append(t_fired - t0)
    if failed:
        series.errors.append(failed[0])
    elif th.is_alive() or not ended:
        series.errors.append(f"waiter still blocked {GUARD + 5:.0f} s after cancel (hang)")
    elif ended[0][1]:
        series.errors.append("acquired a lock another process holds")
    else:
        series.samples.append(ended[0][0] - t0)
        if ended[0][0] - t0 > GUARD - 1:
            series.errors.append(f"the cancel was lost: the wait ran to its {GUARD:.0f} s deadline")


# P5 -------------------------------------------------------------------------------------------


def waiters(b: Bench, s: Section) -> Figure:
    """N threads, each with a lock object (a session) of its own, queue on a lock we hold.

    Once the server shows all N waiting (pg_locks), we release; each waiter
    releases as soon as it holds. Samples: the time from one grant to the
    next (the first from our release); extra: from our release to the last
    grant, per round. A counter checks that no two waiters held at once.
    """
    import psycopg

    cfg = config(b)
    out = {c.key: Series(extra={"totals": [], "queueing_s": []}) for c in s.contenders}
    monitor = psycopg.connect(s.where.dsn, autocommit=True)
    old_stack = threading.stack_size(256 * 1024)
    try:
        for _ in range(cfg.waiters_rounds):
            for c in _shuffled(b, s.contenders):
                _queue_round(c, s, cfg.waiters, out[c.key], monitor)
    finally:
        threading.stack_size(old_stack)
        monitor.close()
    return {f"{cfg.waiters} waiters": out}


def _waiting(monitor: Any) -> int:
    row = monitor.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return int(row[0])


def _queue_round(c: PgContender, s: Section, n: int, series: Series, monitor: Any) -> None:
    name, timeout = s.name(c.key), _timeout(c)
    grants: list[float] = []
    locks: list[Lock] = []
    inside = [0, 0]  # holding now, most ever at once
    mutex = threading.Lock()

    def run() -> None:
        try:
            lock = c.make(s.where, name)
            locks.append(lock)
            granted = lock.acquire(timeout=timeout)
        except Exception as e:
            series.errors.append(f"{type(e).__name__}: {e}")
            return
        t = time.monotonic()
        if not granted:
            series.errors.append(f"timed out after {GUARD:.0f} s")
            return
        with mutex:
            inside[0] += 1
            inside[1] = max(inside)
        grants.append(t)
        with mutex:
            inside[0] -= 1
        lock.release()

    holder = c.make(s.where, name)
    try:
        if not holder.acquire(timeout=timeout):
            raise RuntimeError(f"{c.key}: could not take a free lock")
        threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
        t_start = time.monotonic()
        for th in threads:
            th.start()
        queued = _waiting(monitor)
        while queued < n and time.monotonic() < t_start + 30 and any(t.is_alive() for t in threads):
            time.sleep(0.005)
            queued = _waiting(monitor)
        series.extra["queueing_s"].append(time.monotonic() - t_start)
        if queued < n:
            series.errors.append(f"only {queued} of {n} waiters queued in the server")
        t0 = time.monotonic()
        holder.release()
        for th in threads:
            th.join(max(0.1, t0 + 60 - time.monotonic()))
        hung = sum(th.is_alive() for th in threads)
        if hung:
            series.errors.append(f"{hung} waiters still blocked 60 s after the release (hang)")
        if inside[1] > 1:
            series.errors.append(f"{inside[1]} waiters held the lock at once")
        grants.sort()
        series.samples += [b - a for a, b in zip([t0, *grants], grants)]
        if len(grants) == n:
            series.extra["totals"].append(grants[-1] - t0)
    finally:
        _close_all([holder, *locks])


STEPS: list[tuple[str, Callable[[Bench], Any]]] = [
    ("pg_uncontended", _step(uncontended)),
    ("pg_handoff", _step(handoff)),
    ("pg_overshoot", _step(overshoot)),
    ("pg_cancel", _step(cancel)),
    ("pg_waiters", _step(waiters)),
]
