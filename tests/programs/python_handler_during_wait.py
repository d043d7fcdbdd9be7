"""A child program of tests/test_faults.py::test_python_handler_during_a_wait
(see that test for what it pins)."""

from __future__ import annotations

import signal
import sys
import threading
import time

from touchfile import LockTimeout, TouchFile

tf = TouchFile(sys.argv[1])
waited: list[float] = []


def waiter() -> None:
    start = time.monotonic()
    try:
        tf.acquire(timeout=0.3)
    except LockTimeout:
        waited.append(time.monotonic() - start)


thread = threading.Thread(target=waiter)
thread.start()
time.sleep(0.1)  # blocked in flock() by now
signal.signal(signal.SIGURG, lambda signum, frame: None)
thread.join(5)
print("timed out", len(waited) == 1 and 0.3 <= waited[0] < 1)
