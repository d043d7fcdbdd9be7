"""A child program of tests/test_faults.py::test_daemon_thread_waiters_at_shutdown
(see that test for what it pins)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

from touchfile import Context, LockError, TouchFile

tf = TouchFile(sys.argv[1])
ctx = Context.with_cancel()
ready = threading.Barrier(41)


def waiter(i: int) -> None:
    ready.wait()
    ways: list[dict[str, Any]] = [
        {},
        {"ctx": ctx},
        {"timeout": 3600, "ctx": ctx},
        {"timeout": 0.05 + i / 1000},
        {"timeout": 3600},
    ]
    how = ways[i % 5]
    with contextlib.suppress(LockError):
        tf.acquire(**how)


for i in range(40):
    threading.Thread(target=waiter, args=(i,), daemon=True).start()
ready.wait()
time.sleep(0.05)  # all blocked; some deadlines land as the interpreter shuts down
print("main returns", flush=True)
