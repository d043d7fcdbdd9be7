"""A child program of tests/test_processes.py::test_fork_child_cannot_break_parents_lock
(see that test for what it pins)."""

from __future__ import annotations

import fcntl
import os
import sys
import warnings

from touchfile import LockError, LockTimeout, TouchFile

warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
tf = TouchFile(sys.argv[1])
tf.acquire()
pid = os.fork()
if pid == 0:
    out = []
    try:
        tf.release()
    except LockError:
        out.append("release-refused")
    try:
        tf.acquire(timeout=0)
    except LockTimeout:
        out.append("child-excluded")
    with TouchFile(sys.argv[1]) as other:
        try:
            other.acquire(timeout=0.02)
        except LockTimeout:
            out.append("other-excluded")
    tf.close()
    print(" ".join(out), flush=True)
    sys.exit(0)  # a normal exit, finalizers and all
os.waitpid(pid, 0)
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("parent-lost-lock")
except BlockingIOError:
    print("parent-still-holds")
tf.release()
tf.acquire(timeout=0)
print("parent-reacquired")
