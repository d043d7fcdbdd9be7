"""What another process sees of a lock on argv[1], through filelock and a
raw flock(): prints filelock-got-it or filelock-blocked, then flock-got-it or
flock-blocked (tests/test_exclusion.py)."""

from __future__ import annotations

import fcntl
import os
import sys

from filelock import FileLock, Timeout

try:
    FileLock(sys.argv[1]).acquire(timeout=0)
    print("filelock-got-it")
except Timeout:
    print("filelock-blocked")
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    print("flock-got-it")
except BlockingIOError:
    print("flock-blocked")
