"""A child program of tests/test_faults.py::test_sa_restart_handler_during_a_wait
(see that test for what it pins)."""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings

from sigaction import add_sa_restart

from touchfile import Context, LockTimeout, TouchFile

tf = TouchFile(sys.argv[1])
ctx = Context.with_cancel()
granted, done = threading.Event(), threading.Event()


def waiter() -> None:
    tf.acquire(ctx=ctx)
    granted.set()
    done.wait(10)
    tf.release()


thread = threading.Thread(target=waiter)
thread.start()
time.sleep(0.1)  # blocked in flock() by now
add_sa_restart(signal.SIGURG)
ctx.cancel()
thread.join(0.2)
print("cancel ended it", not thread.is_alive(), flush=True)
sys.stdin.readline()  # the holder has released
print("granted", granted.wait(5), flush=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    start = time.monotonic()
    try:
        tf.acquire(timeout=0.05)  # the waiter holds it now
    except LockTimeout:
        print("next wait timed out", 0.05 <= time.monotonic() - start < 1)
print("warned", [w.category.__name__ for w in caught], flush=True)
done.set()
thread.join(10)
