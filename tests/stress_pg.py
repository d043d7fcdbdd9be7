"""The chaos harness's PostgreSQL mode (python tests/stress.py --postgres).

Worker processes of several threads take shared and exclusive PostgresLocks
on a few names, with random timeouts and cancels; each exclusive holder asks
for its fencing token and writes through a store that refuses a token below
the largest it has seen. Meanwhile workers are SIGKILLed and SIGSTOPped,
sessions are ended with pg_terminate_backend(), and the server restarts once
a minute. Every grant, release, loss, write and kill goes to one O_APPEND
ledger, from which the checks are made:

- fencing tokens of each name increase with the order of the grants;
- no two holders overlap (exclusive beside anything), except where the
  earlier hold was lost, and then by at most LOSS_WINDOW seconds;
- every wait ends within LATE seconds of its deadline or cancel;
- no unexpected exception; no session or advisory lock left at the end.
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from pgserver import Server

LOSS_WINDOW = 1.0  # seconds two holders may overlap after the first lost its session
LATE = 4.0  # a wait's end after its deadline or cancel: GRACE, a restart, backoff


def _record(fd: int, *fields: object) -> None:
    os.write(fd, (" ".join(map(str, fields)) + "\n").encode())


def _store_write(path: str, token: int) -> bool:
    """The store: refuses a token below the largest it has seen."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        seen = [int(line) for line in f if line.strip()]
        if seen and token < max(seen):
            return False
        f.write(f"{token}\n")
        return True


def _worker(dsn: str, ledger: str, stores: str, names: list[str], threads: int,
            end: float, seed: int) -> None:  # fmt: skip
    from touchfile import Context, LockCancelled, LockLost, LockTimeout
    from touchfile.postgres import PostgresLock

    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND)
    pid = os.getpid()
    while True:  # started as the server restarts, say
        try:
            locks = {name: PostgresLock(name, dsn) for name in names}
            break
        except ConnectionError:
            if time.monotonic() > end:
                return
            time.sleep(0.1)

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as error:
            _record(fd, "e", f"{pid}.{n}", repr(error).replace(" ", "_")[:200])

    def work(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        tid = f"{pid}.{n}"
        while time.monotonic() < end:
            name = rng.choice(names)
            lk = locks[name]
            kind = "exclusive" if rng.random() < 0.6 else "shared"
            mode = rng.choice(["try", "short", "long", "cancel"])
            timeout = {"try": 0.0, "short": rng.uniform(0.001, 0.05),
                       "long": rng.uniform(0.1, 1.0), "cancel": None}[mode]  # fmt: skip
            ctx = Context.with_cancel() if mode == "cancel" else None
            limit = time.monotonic() + (timeout or 0.0)
            if ctx is not None:
                delay = rng.uniform(0.001, 0.2)
                limit = time.monotonic() + delay
                threading.Timer(delay, ctx.cancel).start()
            try:
                lk.acquire(kind, timeout, ctx)
            except (LockTimeout, LockCancelled) as error:
                over = time.monotonic() - limit
                _record(fd, "t" if isinstance(error, LockTimeout) else "c", tid, f"{over:.4f}")
                continue
            except ConnectionError as error:
                _record(fd, "conn", tid, str(error).replace(" ", "_")[:80])
                time.sleep(0.05)
                continue
            session = lk._locks.held[threading.get_ident()].pgconn.backend_pid
            _record(fd, "g", tid, name, kind, f"{time.monotonic():.6f}", session)
            token = None
            try:
                if kind == "exclusive":
                    token = lk.fencing_token()
                    _record(fd, "w", tid, name, token, int(_store_write(f"{stores}/{name}", token)),
                            f"{time.monotonic():.6f}")  # fmt: skip
                time.sleep(rng.uniform(0, 0.01))
            except LockLost:
                pass  # release() says it too
            end_at = time.monotonic()
            _record(fd, "r0", tid, f"{end_at:.6f}")  # before: a kill may land after the release
            try:
                lk.release()
                _record(fd, "r", tid, name, f"{end_at:.6f}", "held")
            except LockLost:
                _record(fd, "r", tid, name, f"{end_at:.6f}", "lost")
                if token is not None:  # a write that comes late, with the old token
                    _record(fd, "late", int(_store_write(f"{stores}/{name}", token)))

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    for lk in locks.values():
        lk.close()
    _record(fd, "x", pid)


class Report:
    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.violations: list[str] = []
        self.overs: list[float] = []

    def figures(self) -> str:
        c = self.counts
        overs = sorted(self.overs) or [0.0]
        p99 = overs[min(len(overs) - 1, int(len(overs) * 0.99))]
        lines = [
            ("locks granted", c["g"]),
            ("timeouts / cancels", f"{c['t']} / {c['c']}"),
            ("holds lost (release raised LockLost)", c["lost"]),
            ("store writes accepted / refused", f"{c['w1']} / {c['w0']}"),
            ("late writes of lost holders accepted / refused", f"{c['late1']} / {c['late0']}"),
            ("SIGKILLs / SIGSTOP pauses / pg_terminate_backend",
             f"{c['kill']} / {c['stop']} / {c['term']}"),
            ("server restarts", c["restart"]),
            ("acquisitions that met a server down (ConnectionError)", c["conn"]),
            ("wait end after deadline or cancel: p99 / max",
             f"{p99 * 1000:.1f} / {overs[-1] * 1000:.1f} ms"),
            ("workers ended cleanly", c["x"]),
            ("invariant violations", len(self.violations)),
        ]  # fmt: skip
        text = "\n".join(f"{k:<56}{v}" for k, v in lines)
        return text + "".join(f"\n  VIOLATION: {v}" for v in self.violations[:20])


def run(seconds: float, workers: int = 3, threads: int = 3, names: int = 2,
        seed: int | None = None, restart_every: float = 60.0) -> Report:  # fmt: skip
    """Run the harness for seconds against a server of its own; its Report."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    base = tempfile.mkdtemp(prefix="touchfile-stress-pg-")
    os.chmod(base, 0o755)
    server = Server.start(base)
    work = tempfile.mkdtemp(prefix="touchfile-stress-pg-work-")
    ledger = f"{work}/ledger"
    Path(ledger).touch()
    stores = f"{work}/stores"
    os.mkdir(stores)
    lock_names = [f"stress-{i}" for i in range(names)]
    end = time.monotonic() + seconds
    log = os.open(ledger, os.O_WRONLY | os.O_APPEND)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    report = Report()

    def spawn() -> None:
        argv = [sys.executable, __file__, "--worker", server.dsn, ledger, stores,
                ",".join(lock_names), str(threads), repr(end),
                str(rng.randrange(1 << 30))]  # fmt: skip
        proc = subprocess.Popen(argv, cwd="/")
        procs[proc.pid] = proc

    try:
        for _ in range(workers):
            spawn()
        next_restart = time.monotonic() + min(restart_every, seconds / 2)
        while time.monotonic() < end - 0.5:
            time.sleep(rng.uniform(0.2, 0.6))
            alive = [p for p in procs.values() if p.poll() is None]
            action = rng.choice(["kill", "stop", "term", "term"])
            if time.monotonic() >= next_restart:
                began = time.monotonic()
                server.restart("fast")
                _record(log, "restart", f"{began:.6f}", f"{time.monotonic():.6f}")
                report.counts["restart"] += 1
                next_restart += restart_every
            elif action == "kill" and alive:
                victim = rng.choice(alive)
                _record(log, "k", victim.pid, f"{time.monotonic():.6f}")  # no later than the kill
                victim.kill()
                victim.wait()
                report.counts["kill"] += 1
                spawn()
            elif action == "stop" and alive:
                victim = rng.choice(alive)
                victim.send_signal(19)  # SIGSTOP, shorter than any bound
                time.sleep(rng.uniform(0.05, 0.3))
                victim.send_signal(18)  # SIGCONT
                report.counts["stop"] += 1
            elif action == "term":
                before = time.monotonic()
                ended = server.psql(
                    "SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE application_name "
                    "LIKE 'stress_pg.py pid %' ORDER BY random() LIMIT 1) s "
                    "WHERE pg_terminate_backend(pid)"
                )
                for pid in ended.split():
                    _record(log, "term", pid, f"{before:.6f}")
                    report.counts["term"] += 1
        for proc in procs.values():
            proc.wait(timeout=60)
        time.sleep(0.2)
        left = server.psql(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
            "'stress_pg.py pid %'), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')"
        )
        if left != "0|0":
            report.violations.append(f"sessions|advisory locks left at the end: {left}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        os.close(log)
        server.stop()
    _check(ledger, report)
    if report.violations:
        report.violations.append(f"the ledger is kept: {ledger}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    return report


def _check(ledger: str, report: Report) -> None:
    """The invariants, from the ledger (times are time.monotonic(), one clock)."""
    # name -> (start, end, kind, how it ended, tid, when its session ended, if it did)
    holds: dict[str, list[tuple[float, float, str, str, str, float]]] = defaultdict(list)
    open_holds: dict[str, tuple[str, str, float, str]] = {}  # tid -> (name, kind, start, session)
    tokens: dict[str, list[tuple[float, int]]] = defaultdict(list)
    kills: dict[str, float] = {}
    releasing: dict[str, float] = {}  # tid -> when its last release began
    ended: dict[str, list[float]] = defaultdict(list)  # session -> terminated at
    restarts: list[tuple[float, float]] = []  # (began, ended)
    spans: list[tuple[str, str, str, float, float, str, str]] = []
    for line in Path(ledger).read_text().splitlines():
        f = line.split()
        kind = f[0]
        if kind == "g":
            report.counts["g"] += 1
            open_holds[f[1]] = (f[2], f[3], float(f[4]), f[5])
        elif kind == "w":
            report.counts[f"w{f[4]}"] += 1
            tokens[f[2]].append((open_holds[f[1]][2], int(f[3])))
        elif kind == "r":
            name, what, start, session = open_holds.pop(f[1])
            spans.append((name, what, session, start, float(f[3]), f[4], f[1]))
            report.counts["lost"] += f[4] == "lost"
        elif kind in ("t", "c"):
            report.counts[kind] += 1
            over = float(f[2])
            report.overs.append(max(0.0, over))
            if over > LATE:
                report.violations.append(f"{f[1]}: a wait ended {over:.2f} s after its end")
        elif kind == "r0":
            releasing[f[1]] = float(f[2])
        elif kind == "k":
            kills[f[1]] = float(f[2])
        elif kind == "term":
            ended[f[1]].append(float(f[2]))
        elif kind == "restart":
            restarts.append((float(f[1]), float(f[2])))
        elif kind in ("conn", "x"):
            report.counts[kind] += 1
        elif kind == "late":
            report.counts[f"late{f[1]}"] += 1
        elif kind == "e":
            report.violations.append(f"{f[1]}: unexpected {f[2]}")
    for tid, (name, what, start, session) in open_holds.items():  # its worker was killed
        end = kills.get(tid.split(".")[0])
        if end is not None:
            began = releasing.get(tid, -math.inf)
            if began >= start:  # killed as it released
                end = min(end, began)
            spans.append((name, what, session, start, end, "killed", tid))
    for name, what, session, start, end, how, tid in spans:
        # When the server let the lock go, at the earliest: the session's end,
        # if it came first. A termination is asked for before it is done (and
        # a grant may just beat it); a restart ends sessions as it goes.
        gone = [max(t, start) for t in ended[session] if start - 1.0 <= t <= end]
        gone += [max(began, start) for began, done in restarts if began <= end and start <= done]
        if how == "killed":
            gone.append(end)
        lost_at = min(gone, default=math.inf)
        if how == "lost" and end - lost_at > LOSS_WINDOW:
            report.violations.append(f"{tid}: learned of its loss {end - lost_at:.2f} s late")
        holds[name].append((start, min(end, lost_at), what, how, tid, lost_at))
    for name, granted in tokens.items():
        ordered = [token for _, token in sorted(granted)]
        if ordered != sorted(set(ordered)):
            report.violations.append(f"{name}: fencing tokens out of grant order: {ordered[:20]}")
    for name, held in holds.items():
        held.sort()
        for i, (_, end, what, how, tid, _) in enumerate(held):
            for start2, _, what2, _, tid2, lost2 in held[i + 1 :]:
                if start2 >= end:
                    break
                if what == "shared" and what2 == "shared":
                    continue
                if lost2 != math.inf:
                    # Granted and lost before its holder could even say it
                    # held it: its grant time here is later than the server's.
                    continue
                report.violations.append(
                    f"{name}: {tid} ({what}, {how}) and {tid2} ({what2}) held together "
                    f"for {(end - start2) * 1000:.1f} ms"
                )


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    dsn, ledger, stores, names, threads, end, seed = sys.argv[2:9]
    _worker(dsn, ledger, stores, names.split(","), int(threads), float(end), int(seed))
