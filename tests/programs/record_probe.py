"""Could a newcomer using fcntl record locks take the lock now? argv: TOOL PATH
KIND, TOOL "lockf" (fcntl.lockf(), non-blocking) or "fasteners"
(InterProcessReaderWriterLock, non-blocking). Prints "free" or "busy"."""

from __future__ import annotations

import fcntl
import os
import sys

import fasteners

tool, path, kind = sys.argv[1:4]
exclusive = kind == "exclusive"
if tool == "lockf":
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        print("free")
    except OSError:  # EAGAIN or EACCES
        print("busy")
else:
    lock = fasteners.InterProcessReaderWriterLock(path)
    taken = (
        lock.acquire_write_lock(blocking=False)
        if exclusive
        else lock.acquire_read_lock(blocking=False)
    )
    print("free" if taken else "busy")
