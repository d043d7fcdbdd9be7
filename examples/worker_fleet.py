"""A fleet of workers, on any number of hosts, sharing one PostgreSQL lock with deadlines.

    python examples/worker_fleet.py 'postgresql://user@db1/app'   # or PG* variables

Each worker (here, processes on this host; in production, one per machine)
rebuilds a shared cache a few times. A rebuild reads the cache's version from
a table, works for a while, and writes the version plus one: two rebuilds at
once would lose an update. So each takes the lock "fleet-cache" first, with
a deadline: a worker that cannot get it in time skips that round and says
who held it. At the end the version must equal the number of rebuilds.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg

from touchfile import LockTimeout
from touchfile.postgres import PostgresLock

WORKERS = 4
ROUNDS = 5
WORK = 0.03  # seconds a rebuild takes
DEADLINE = 1.0  # how long a patient worker waits for the lock
IMPATIENT = 0.02  # worker 0 waits only this long, so it sometimes gives up
TABLE = "touchfile_fleet_cache"


def worker(number: int, dsn: str) -> None:
    """Rebuild the cache ROUNDS times, each under the lock."""
    deadline = IMPATIENT if number == 0 else DEADLINE
    with PostgresLock("fleet-cache", dsn) as lk, psycopg.connect(dsn, autocommit=True) as db:
        for _ in range(ROUNDS):
            start = time.monotonic()
            try:
                with lk.lock(timeout=deadline):
                    waited = time.monotonic() - start
                    row = db.execute(f"SELECT version FROM {TABLE}").fetchone()
                    assert row is not None
                    time.sleep(WORK)  # the rebuild itself
                    db.execute(f"UPDATE {TABLE} SET version = %s", (row[0] + 1,))
                print(f"[worker {number}] rebuilt version {row[0] + 1} "
                      f"after waiting {waited * 1000:.1f} ms", flush=True)  # fmt: skip
            except LockTimeout as error:
                who = "; ".join(f"pid {h.pid}: {h.application}" for h in lk.holders())
                print(f"[worker {number}] gave up: {error} (held by {who or 'nobody now'})",
                      flush=True)  # fmt: skip
            time.sleep(WORK / 2)


def main() -> None:
    dsn = sys.argv[1] if len(sys.argv) > 1 else ""
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {TABLE}")
        db.execute(f"CREATE TABLE {TABLE} (version int NOT NULL)")
        db.execute(f"INSERT INTO {TABLE} VALUES (0)")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(n), dsn], stdout=subprocess.PIPE, text=True
        )
        for n in range(WORKERS)
    ]
    lines = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"a worker failed: {out}"
        lines += out.splitlines()
    for line in lines:
        print(line)
    rebuilds = sum("rebuilt" in line for line in lines)
    gave_up = sum("gave up" in line for line in lines)
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(f"SELECT version FROM {TABLE}").fetchone()
        db.execute(f"DROP TABLE {TABLE}")
    version = row[0] if row else -1
    print(f"rebuilds: {rebuilds}, gave up: {gave_up}, final version: {version}, "
          f"lost updates: {rebuilds - version}")  # fmt: skip
    assert rebuilds + gave_up == WORKERS * ROUNDS and version == rebuilds
    print("OK")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), sys.argv[3])
    else:
        main()
