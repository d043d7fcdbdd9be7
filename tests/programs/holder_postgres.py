"""A PostgreSQL lock holder for tests/helpers.py's Holder: says "locked",
releases when a line arrives on stdin (printing the time.monotonic() of the
release), then exits at the next line. argv: URL#NAME KIND."""

from __future__ import annotations

import sys
import time

from touchfile.postgres import PostgresLock

dsn, _, name = sys.argv[1].partition("#")
lk = PostgresLock(name, dsn)
lk.acquire(sys.argv[2])
print("locked", flush=True)
sys.stdin.readline()
t = time.monotonic()
lk.release()
print(t, flush=True)
sys.stdin.readline()
