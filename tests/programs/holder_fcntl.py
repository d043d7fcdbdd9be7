"""A lock holder for tests/helpers.py's Holder, taking the lock with fcntl.flock()
(or with "lockf", fcntl.lockf(): a process-associated POSIX record lock, as
lockf(3) users and SQLite take): says "locked", releases when a line arrives on
stdin (printing the time.monotonic() of the release), then exits at the next
line. argv: PATH KIND [lockf]."""

from __future__ import annotations

import fcntl
import os
import sys
import time

lock = fcntl.lockf if sys.argv[3:] == ["lockf"] else fcntl.flock
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
lock(fd, fcntl.LOCK_EX if sys.argv[2] == "exclusive" else fcntl.LOCK_SH)
print("locked", flush=True)
sys.stdin.readline()
t = time.monotonic()
lock(fd, fcntl.LOCK_UN)
print(t, flush=True)
sys.stdin.readline()
