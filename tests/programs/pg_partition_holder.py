"""A holder on a host of its own (a network namespace), writing to a store
that checks fencing tokens. argv: DSN NAME STORE LABEL.

Takes the lock (waiting up to 60 s), gets its fencing token, writes to the
store and says "locked TOKEN". Then it says "lost T" (time.monotonic()) when
its held context ends, and at the next line on stdin writes again with its
old token, saying whether the store accepted it."""

from __future__ import annotations

import fcntl
import sys
import time

from touchfile.postgres import PostgresLock


def write(store: str, token: int, what: str) -> bool:
    """The store: refuses a token below the largest it has seen."""
    with open(store, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        tokens = [int(line.split()[0]) for line in f if line.strip()]
        if tokens and token < max(tokens):
            return False
        f.write(f"{token} {what}\n")
        return True


dsn, name, store, label = sys.argv[1:5]
lk = PostgresLock(name, dsn)
lk.acquire(timeout=60)
token = lk.fencing_token()
assert write(store, token, label)
print("locked", token, flush=True)
ctx = lk.held_context()
while not ctx.cancelled:  # the work under the lock checks it now and then
    time.sleep(0.01)
print("lost", time.monotonic(), flush=True)
sys.stdin.readline()
print("late write", "accepted" if write(store, token, label + "-late") else "rejected", flush=True)
