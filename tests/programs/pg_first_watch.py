"""Many threads take their first PostgreSQL locks at once, in a fresh
process, so that the watcher is asked for by all of them together: every
acquire and release must return. argv: DSN. Prints "done N"."""

from __future__ import annotations

import sys
import threading

from touchfile.postgres import PostgresLock

dsn = sys.argv[1]
start = threading.Barrier(16)
done: list[int] = []


def work(n: int) -> None:
    with PostgresLock(f"first-watch-{n}", dsn) as lk:
        start.wait()
        for _ in range(20):
            lk.acquire()
            lk.release()
    done.append(n)


threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("done", len(done))
