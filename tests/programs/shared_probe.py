"""Can another process take a shared lock on argv[1] now? Prints free or held
(tests/test_processes.py)."""

from __future__ import annotations

import fcntl
import os
import sys

fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
