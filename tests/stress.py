"""touchfile's stress and chaos harness: processes, threads, faults, and a ledger.

    python tests/stress.py --minutes 10    # the soak: prints figures, exits 1 on a violation
    python tests/stress.py --seconds 15    # the quick run that tests/test_stress.py makes

Workers (N processes of M threads) take shared and exclusive locks on a few
lock files with random timeouts (0, under 1 ms, short, long, none) and
cancels from another thread, write and check data under the locks, and now
and then fork a child that takes a lock as well. Meanwhile the orchestrator
SIGKILLs workers (holders found with holders(), and others that are likely
waiting), SIGSTOPs and SIGCONTs holders, and starts new workers.

Every fact goes to one ledger opened with O_APPEND: each record is a single
short write(), so records never interleave and their order is the order of
the writes. A holder writes E just after it is granted a lock and L just
before it releases it, so each E..L span lies inside a span in which it truly
held the lock: two conflicting spans that overlap in the ledger are two
holders in at once. A worker to be killed is first stopped (confirmed by
waitpid) and K written while it still holds its locks; its spans end at K.

Records, one per line, fields separated by spaces:
    E/L file kind pid tid       enter / leave a lock ("ex" or "sh")
    W outcome pid start due end a wait that ended by timeout, cancel, or late
    D pid                       data left half-written by pid (fine if pid was killed)
    V pid reason...             a violation a worker saw itself
    F pid                       a worker ended and passed its own leak checks
    X+ pid / X- pid             a forked child started / ended well
    K pid / P pid t0 t1         the orchestrator killed / paused (stopped) pid
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from touchfile import EXCLUSIVE, SHARED, Context, LockCancelled, LockTimeout, TouchFile

# A wait must end within this of its deadline or cancel. Generous: the run
# keeps two cores busy with a dozen threads, and a waiter still needs the GIL.
BOUND = 0.1
PAYLOAD = 4096
CHUNKS = 4
HEADER = 32  # b"clean <gen>" or b"dirty <pid>", padded


def _record(fd: int, *fields: object) -> None:
    os.write(fd, (" ".join(map(str, fields)) + "\n").encode())


def _now() -> str:
    return f"{time.monotonic():.6f}"


# ---- the data guarded by each lock --------------------------------------------


def _check(data: bytes) -> str | None:
    """Why data is not what a writer left it as, or None if it is consistent.

    "dirty PID" means PID died half-way through a write; the ledger's check
    decides whether PID had been killed by then (if not, two were in at once).
    """
    state, _, value = data[:HEADER].decode().partition(" ")
    number = int(value)
    if state == "dirty":
        return f"dirty {number}"
    pattern = number.to_bytes(8, "little") * (PAYLOAD // 8)
    if data[HEADER:] != pattern:
        return f"torn data: payload does not match generation {number}"
    return None


def _header(state: str, number: int) -> bytes:
    return f"{state} {number}".encode().ljust(HEADER - 1) + b"\n"


def _write(fd: int, gen: int) -> None:
    os.pwrite(fd, _header("dirty", os.getpid()), 0)
    pattern = gen.to_bytes(8, "little") * (PAYLOAD // 8 // CHUNKS)
    for i in range(CHUNKS):
        os.pwrite(fd, pattern, HEADER + i * len(pattern))
        time.sleep(0)  # let other threads run mid-write
    os.pwrite(fd, _header("clean", gen), 0)


def _use(fd: int, exclusive: bool) -> str | None:
    """Read (and, when exclusive, rewrite) the data; why it was wrong, or None."""
    data = os.pread(fd, HEADER + PAYLOAD, 0)
    why = _check(data)
    if exclusive:
        if why is None or why.startswith("dirty"):
            state, _, value = data[:HEADER].decode().partition(" ")
            _write(fd, int(value) + 1 if state == "clean" else 1)
        return why
    time.sleep(0)
    again = os.pread(fd, HEADER + PAYLOAD, 0)
    if why is None and again != data:
        return "data changed under a shared lock"
    return why


# ---- a worker process -----------------------------------------------------------


def _status(*keys: str) -> dict[str, str]:
    fields = dict(
        line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    return {key: fields[key].strip() for key in keys}


class _Canceller(threading.Thread):
    """Cancels a random registered Context every few milliseconds, noting when."""

    def __init__(self, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.rng = random.Random(seed)
        self.stop = stop
        self.live: dict[Context, float] = {}  # ctx -> when it was cancelled (0: not yet)
        self.mutex = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0, 0.005)):
            with self.mutex:
                pending = [ctx for ctx, when in self.live.items() if not when]
                if pending:
                    ctx = self.rng.choice(pending)
                    self.live[ctx] = time.monotonic()
                    ctx.cancel()


class _Worker:
    def __init__(self, directory: Path, files: int, end: float, seed: int) -> None:
        self.directory = directory
        self.end = end
        self.seed = seed
        self.ledger = os.open(directory / "ledger", os.O_WRONLY | os.O_APPEND)
        self.fds = len(os.listdir("/proc/self/fd"))
        self.tfs = [TouchFile(directory / f"{i}.lock") for i in range(files)]
        self.data = [os.open(directory / f"{i}.data", os.O_RDWR) for i in range(files)]
        self.stop = threading.Event()
        self.canceller = _Canceller(seed, self.stop)
        self.pid = os.getpid()

    def violation(self, why: str) -> None:
        _record(self.ledger, "V", os.getpid(), why)

    def hold(self, f: int, exclusive: bool) -> None:
        """Under the lock just taken: write E, use the data, write L."""
        kind = "ex" if exclusive else "sh"
        pid, tid = os.getpid(), threading.get_native_id()
        _record(self.ledger, "E", f, kind, pid, tid)
        why = _use(self.data[f], exclusive)
        if why and why.startswith("dirty"):
            _record(self.ledger, "D", why.split()[1])
        elif why:
            self.violation(why)
        _record(self.ledger, "L", f, kind, pid, tid)

    def one(self, rng: random.Random) -> None:
        f = rng.randrange(len(self.tfs))
        tf = self.tfs[f]
        exclusive = rng.random() < 0.5
        r = rng.random()
        timeout: float | None = None  # 20 %: no timeout
        if r < 0.1:
            timeout = 0.0
        elif r < 0.3:
            timeout = rng.uniform(0, 0.001)
        elif r < 0.6:
            timeout = rng.uniform(0.001, 0.02)
        elif r < 0.8:
            timeout = rng.uniform(0.02, 0.2)
        ctx = Context.with_cancel() if rng.random() < 0.25 else None
        if ctx is not None:
            with self.canceller.mutex:
                self.canceller.live[ctx] = 0.0
        start = time.monotonic()
        due = math.inf if timeout is None else start + timeout
        try:
            tf.acquire(EXCLUSIVE if exclusive else SHARED, timeout, ctx)
        except LockTimeout:
            _record(self.ledger, "W", "timeout", self.pid, start, due, _now())
            return
        except LockCancelled:
            end = time.monotonic()
            assert ctx is not None
            cancelled = self.canceller.live[ctx]
            _record(self.ledger, "W", "cancel", self.pid, start, max(cancelled, start), end)
            return
        finally:
            if ctx is not None:
                with self.canceller.mutex:
                    del self.canceller.live[ctx]
        end = time.monotonic()
        if end > due + 0.001:
            _record(self.ledger, "W", "late", self.pid, start, due, end)
        try:
            self.hold(f, exclusive)
            time.sleep(rng.choice((0, 0, 0.0002, 0.002)))
        finally:
            tf.release()

    def fork(self, rng: random.Random) -> None:
        """Fork mid-run (other threads hold and wait); the child takes a lock too."""
        f = rng.randrange(len(self.tfs))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(10)  # a child that hangs dies of SIGALRM, without X-
                me = os.getpid()
                _record(self.ledger, "X+", me)
                tf = self.tfs[f]
                if tf.locked():
                    self.violation("forked child believes it holds its parent's lock")
                with tf.lock(ctx=Context.with_timeout(5)):
                    self.hold(f, True)
                _record(self.ledger, "X-", me)
                code = 0
            except BaseException as error:
                self.violation(f"forked child: {error!r}")
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            self.violation(f"forked child {pid} ended with wait status {status}")

    def thread(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        while time.monotonic() < self.end:
            try:
                if rng.random() < 0.002:
                    self.fork(rng)
                else:
                    self.one(rng)
            except BaseException as error:
                self.violation(f"{error!r}")

    def run(self, threads: int) -> None:
        # The baseline is taken after a first wait, which installs the
        # native handler and starts the scheduler thread, and after a first
        # thread, for which glibc installs handlers of its own (signals 32, 33).
        first = threading.Thread(target=int)
        first.start()
        first.join()
        with (
            TouchFile(self.tfs[0].path) as other,
            other.lock(),
            contextlib.suppress(LockTimeout),
        ):
            self.tfs[0].acquire(timeout=0.001)
        keys = ("SigBlk", "SigIgn", "SigCgt")
        before = (_status(*keys), len(os.listdir("/proc/self/task")))
        self.canceller.start()
        workers = [threading.Thread(target=self.thread, args=(n,)) for n in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        self.stop.set()
        self.canceller.join()
        # join() returns a moment before the thread itself is gone.
        limit = time.monotonic() + 2
        while (after := (_status(*keys), len(os.listdir("/proc/self/task")))) != before:
            if time.monotonic() > limit:
                break
            time.sleep(0.01)
        if after != before:
            self.violation(f"signal state or threads changed: {before} -> {after}")
        pending = _status("SigPnd", "ShdPnd")
        if any(int(v, 16) for v in pending.values()):
            self.violation(f"signals left pending: {pending}")
        for tf in self.tfs:
            tf.close()
        for fd in self.data:
            os.close(fd)
        fds = len(os.listdir("/proc/self/fd"))
        if fds != self.fds:
            self.violation(f"descriptors leaked: {self.fds} open before, {fds} after close()")
        _record(self.ledger, "F", self.pid)


def _worker_main(argv: list[str]) -> None:
    directory, files, threads, end, seed = argv
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, on purpose
    worker = _Worker(Path(directory), int(files), float(end), int(seed))
    worker.run(int(threads))


# ---- the orchestrator --------------------------------------------------------------


@dataclass
class Report:
    seconds: float = 0.0
    grants: int = 0
    timeouts: int = 0
    cancels: int = 0
    late: int = 0
    torn_after_kill: int = 0
    forks: int = 0
    kills_holding: int = 0
    kills_other: int = 0
    pauses: int = 0
    workers_started: int = 0
    workers_finished: int = 0
    overshoot: list[float] = field(default_factory=list)  # timeouts, seconds past due
    cancel_latency: list[float] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (when, how long)
    violations: list[str] = field(default_factory=list)

    def stall_near(self, t0: float, t1: float) -> float:
        """The longest machine stall seen between t0 and t1 (seconds)."""
        return max((d for t, d in self.stalls if t0 - 1 <= t <= t1 + 1), default=0.0)

    def figures(self) -> str:
        def ms(values: list[float]) -> str:
            if not values:
                return "-"
            values = sorted(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            return (
                f"median {statistics.median(values) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
                f"max {values[-1] * 1e3:.2f} ms"
            )

        rows = [
            ("run time", f"{self.seconds:.0f} s"),
            ("locks granted", f"{self.grants} ({self.grants / max(self.seconds, 1e-9):.0f}/s)"),
            ("timeouts", str(self.timeouts)),
            ("cancels", str(self.cancels)),
            ("grants over 1 ms past the deadline", str(self.late)),
            ("forks mid-run (child took a lock)", str(self.forks)),
            ("SIGKILLs of holders", str(self.kills_holding)),
            ("SIGKILLs of other workers", str(self.kills_other)),
            ("SIGSTOP/SIGCONT pauses", str(self.pauses)),
            ("half-written data met after a kill", str(self.torn_after_kill)),
            (
                "workers started / ended cleanly",
                f"{self.workers_started} / {self.workers_finished}",
            ),
            ("timeout overshoot", ms(self.overshoot)),
            ("cancel latency", ms(self.cancel_latency)),
            (
                "machine stalls (a 1 ms sleeper late by over 20 ms)",
                f"{len(self.stalls)}, longest {self.stall_near(-math.inf, math.inf) * 1e3:.0f} ms",
            ),
            ("invariant violations", str(len(self.violations))),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  VIOLATION: {v}" for v in self.violations[:20]]
        return "\n".join(lines)


class _Orchestrator:
    def __init__(
        self, directory: Path, seconds: float, workers: int, threads: int, files: int, seed: int
    ) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.seed = seed
        self.workers, self.threads, self.files = workers, threads, files
        self.end = time.monotonic() + seconds
        for i in range(files):
            (directory / f"{i}.data").write_bytes(
                _header("clean", 0) + (0).to_bytes(8, "little") * (PAYLOAD // 8)
            )
        self.ledger = os.open(directory / "ledger", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.report = Report()
        self.paused: list[tuple[int, float, float]] = []

    def spawn(self) -> None:
        self.report.workers_started += 1
        seed = self.seed * 100_000 + self.report.workers_started
        args = [str(self.directory), str(self.files), str(self.threads), str(self.end), str(seed)]
        proc = subprocess.Popen([sys.executable, __file__, "--worker", *args], cwd="/")
        self.procs[proc.pid] = proc

    def victim(self, holding: bool) -> int | None:
        if holding:
            tf = TouchFile(self.directory / f"{self.rng.randrange(self.files)}.lock")
            try:
                pids = [h.pid for h in tf.holders() if h.pid in self.procs]
            finally:
                tf.close()
        else:
            pids = list(self.procs)
        return self.rng.choice(pids) if pids else None

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid)
        os.kill(pid, signal.SIGSTOP)
        _, status = os.waitpid(pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            _record(self.ledger, "K", pid)  # while it still holds its locks
            os.kill(pid, signal.SIGKILL)
            proc.wait()
        else:  # it ended on its own just now; waitpid reaped it
            proc.returncode = os.waitstatus_to_exitcode(status)
        self.spawn()

    def pause(self, pid: int) -> None:
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(self.rng.uniform(0.001, 0.05))
        os.kill(pid, signal.SIGCONT)
        _record(self.ledger, "P", pid, t0, _now())
        self.report.pauses += 1

    def canary(self, stop: threading.Event) -> None:
        """Notes when the machine itself fails to wake a sleeping thread on time:
        context for a late wait, which the same stall may have delayed."""
        while not stop.is_set():
            t = time.monotonic()
            time.sleep(0.001)
            late = time.monotonic() - t - 0.001
            if late > 0.02:
                self.report.stalls.append((t, late))

    def run(self) -> Report:
        begun = time.monotonic()
        stop = threading.Event()
        canary = threading.Thread(target=self.canary, args=(stop,), daemon=True)
        canary.start()
        for _ in range(self.workers):
            self.spawn()
        while True:
            left = self.end - time.monotonic()
            if left <= 0.5:  # the end belongs to the workers' own checks
                break
            time.sleep(min(self.rng.uniform(0.02, 0.1), left))
            action = self.rng.random()
            pid = self.victim(holding=action < 0.7)
            if pid is None:
                continue
            if action < 0.4 or action >= 0.7:
                self.kill(pid)
            else:
                self.pause(pid)
        for pid, proc in list(self.procs.items()):
            try:
                code = proc.wait(timeout=max(0.0, self.end - time.monotonic()) + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.report.violations.append(f"worker {pid} hung at the end")
                continue
            if code != 0:
                self.report.violations.append(f"worker {pid} exited with {code}")
        self.report.seconds = time.monotonic() - begun
        stop.set()
        canary.join()
        self.wait_for_forked_children()
        self.check()
        return self.report

    def wait_for_forked_children(self) -> None:
        """Children of killed workers live on (for at most 10 s): wait for their X-."""
        limit = time.monotonic() + 12
        while time.monotonic() < limit:
            marks = Counter(
                line.split()[0] for line in (self.directory / "ledger").read_text().splitlines()
            )
            if marks["X+"] == marks["X-"]:
                return
            time.sleep(0.2)

    def check(self) -> None:
        report = self.report
        held: dict[str, dict[tuple[str, str], str]] = {}  # file -> (pid, tid) -> kind
        paused: dict[str, list[tuple[float, float]]] = {}
        waits: list[list[str]] = []
        started: set[str] = set()
        killed: set[str] = set()
        with open(self.directory / "ledger") as ledger:
            for n, line in enumerate(ledger, 1):
                mark, *rest = line.split()
                if mark == "E":
                    f, kind, pid, tid = rest
                    holders = held.setdefault(f, {})
                    if holders and (kind == "ex" or "ex" in holders.values()):
                        report.violations.append(
                            f"line {n}: {kind} holder {pid}/{tid} of lock {f} beside {holders}"
                        )
                    holders[(pid, tid)] = kind
                    report.grants += 1
                elif mark == "L":
                    f, kind, pid, tid = rest
                    if held.get(f, {}).pop((pid, tid), None) != kind:
                        report.violations.append(f"line {n}: leave without enter: {line!r}")
                elif mark == "K":
                    (pid,) = rest
                    killed.add(pid)
                    spans = 0
                    for holders in held.values():
                        for key in [k for k in holders if k[0] == pid]:
                            del holders[key]
                            spans += 1
                    if spans:
                        report.kills_holding += 1
                    else:
                        report.kills_other += 1
                elif mark == "P":
                    pid, since, until = rest
                    paused.setdefault(pid, []).append((float(since), float(until)))
                elif mark == "W":
                    waits.append(rest)
                elif mark == "D":
                    report.torn_after_kill += 1
                    if rest[0] not in killed:
                        report.violations.append(
                            f"line {n}: torn data: writer {rest[0]} was not killed, so still in"
                        )
                elif mark == "V":
                    report.violations.append(f"line {n}: process {rest[0]}: {' '.join(rest[1:])}")
                elif mark == "F":
                    report.workers_finished += 1
                elif mark == "X+":
                    started.add(rest[0])
                    report.forks += 1
                elif mark == "X-":
                    started.discard(rest[0])
        report.violations += [f"forked child {pid} never finished" for pid in sorted(started)]
        for outcome, pid, start, due, end in waits:
            t0, t_due, t1 = float(start), float(due), float(end)
            if outcome == "timeout":
                report.timeouts += 1
                report.overshoot.append(t1 - t_due)
            elif outcome == "cancel":
                report.cancels += 1
                report.cancel_latency.append(t1 - t_due)
            else:
                report.late += 1
            # A wait in a process that was paused meanwhile is excused.
            excused = any(p0 < t1 and t0 < p1 + BOUND for p0, p1 in paused.get(pid, ()))
            if t1 - t_due > BOUND and not excused:
                report.violations.append(
                    f"process {pid}: {outcome} wait ended {(t1 - t_due) * 1e3:.1f} ms after its "
                    f"deadline or cancel (longest machine stall near then: "
                    f"{report.stall_near(t0, t1) * 1e3:.0f} ms)"
                )
        if report.workers_finished != self.workers:
            report.violations.append(
                f"{report.workers_finished} of the last {self.workers} workers ended cleanly"
            )


def run(
    seconds: float,
    *,
    workers: int = 4,
    threads: int = 3,
    files: int = 2,
    seed: int | None = None,
    directory: str | None = None,
) -> Report:
    """Run the harness for ``seconds``; the report lists any violation."""
    if seed is None:
        seed = random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(prefix="touchfile-stress-", dir=directory) as tmp:
        return _Orchestrator(Path(tmp), seconds, workers, threads, files, seed).run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--threads", type=int, default=3, help="threads each (default 3)")
    parser.add_argument("--files", type=int, default=2, help="lock files (default 2)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--postgres", action="store_true",
                        help="PostgresLocks on a server of its own")  # fmt: skip
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    if args.postgres:
        import stress_pg

        print(f"touchfile stress, PostgreSQL: {args.workers} processes x {args.threads} threads, "
              f"{args.files} names, {seconds:.0f} s, seed {seed}", flush=True)  # fmt: skip
        pg = stress_pg.run(seconds, args.workers, args.threads, args.files, seed)
        print(pg.figures())
        return 1 if pg.violations else 0
    mode = "polling" if os.environ.get("TOUCHFILE_NATIVE") == "0" else "native"
    print(
        f"touchfile stress: {args.workers} processes x {args.threads} threads, "
        f"{args.files} lock files, {seconds:.0f} s, {mode} waits, seed {seed}",
        flush=True,
    )
    report = run(seconds, workers=args.workers, threads=args.threads, files=args.files, seed=seed)
    print(report.figures())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
