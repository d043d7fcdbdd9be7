"""Ctrl-C (SIGINT) lands while the main thread waits for a PostgreSQL lock:
the wait ends with KeyboardInterrupt, and the server must have ended the
wait too (no session of ours is left waiting). argv: DSN NAME."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import psycopg

from touchfile.postgres import PostgresLock

dsn, name = sys.argv[1], sys.argv[2]
holder, waiter = PostgresLock(name, dsn), PostgresLock(name, dsn)
# The holder is another thread (this one waiting for its own hold would be a
# self-deadlock, LockError): it holds until let go.
held, let_go = threading.Event(), threading.Event()


def hold() -> None:
    holder.acquire()
    held.set()
    let_go.wait()
    holder.release()


holding = threading.Thread(target=hold)
holding.start()
held.wait()
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
start = time.monotonic()
try:
    waiter.acquire()
    print("granted?!")
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - start:.3f} s")
with psycopg.connect(dsn, autocommit=True) as conn:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    print(f"waiting on the server: {row[0] if row else '?'}")
let_go.set()
holding.join()
waiter.acquire(timeout=5)  # the waiter works again, on a new session
print("then granted")
waiter.release()
holder.close()
waiter.close()
