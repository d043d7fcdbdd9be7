"""A child program of tests/test_processes.py::None
(see that test for what it pins)."""

from __future__ import annotations

import signal
import sys
import time

from touchfile import TouchFile

count: list[int] = []
signal.signal(signal.SIGUSR1, lambda *a: count.append(1))
tf = TouchFile(sys.argv[1])
print("waiting", flush=True)
try:
    tf.acquire()  # main thread, no deadline
    print("acquired", len(count), tf.locked(), flush=True)
    tf.release()
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), tf.locked(), flush=True)
sys.stdin.readline()
