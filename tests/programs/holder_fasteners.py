"""A lock holder for tests/helpers.py's Holder, taking the lock with fasteners'
InterProcessReaderWriterLock (fcntl record locks): says "locked", releases when
a line arrives on stdin (printing the time.monotonic() of the release), then
exits at the next line. argv: PATH KIND."""

from __future__ import annotations

import sys
import time

import fasteners

lock = fasteners.InterProcessReaderWriterLock(sys.argv[1])
exclusive = sys.argv[2] == "exclusive"
(lock.acquire_write_lock if exclusive else lock.acquire_read_lock)()
print("locked", flush=True)
sys.stdin.readline()
t = time.monotonic()
(lock.release_write_lock if exclusive else lock.release_read_lock)()
print(t, flush=True)
sys.stdin.readline()
