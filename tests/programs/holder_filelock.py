"""A lock holder for tests/helpers.py's Holder, taking the lock with filelock: says
"locked", releases when a line arrives on stdin (printing the time.monotonic()
of the release), then exits at the next line. argv: PATH KIND."""

from __future__ import annotations

import sys
import time

from filelock import FileLock

lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
t = time.monotonic()
lock.release()
print(t, flush=True)
sys.stdin.readline()
