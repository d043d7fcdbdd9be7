"""A PostgreSQL lock held across fork(): the child closes its copy of the
PostgresLock (and takes the lock through a new one of its own once the
parent releases), and the parent must still hold the lock after the child
has closed and exited. argv: DSN NAME. Prints what it saw."""

from __future__ import annotations

import os
import sys

from touchfile import LockTimeout
from touchfile.postgres import PostgresLock

dsn, name = sys.argv[1], sys.argv[2]
lk = PostgresLock(name, dsn)
lk.acquire()
pid = os.fork()
if pid == 0:
    code = 0
    try:
        lk.close()  # the child's copies: must not end the parent's session
        other = PostgresLock(name, dsn)
        try:
            other.acquire(timeout=0.2)
            code = 3  # the parent's lock was gone
        except LockTimeout:
            pass
        other.close()
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
probe = PostgresLock(name, dsn)
try:
    probe.acquire(timeout=0.2)
    print("parent lost the lock")
except LockTimeout:
    print("parent still holds the lock")
lk.release()
probe.acquire(timeout=5)
print("released")
probe.close()
lk.close()
