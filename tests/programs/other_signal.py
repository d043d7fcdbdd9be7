"""A child program of tests/test_signals.py::test_interrupt_signal_can_be_chosen
(see that test for what it pins)."""

from __future__ import annotations

import signal
import sys
import time

from sigaction import handler_of

from touchfile import LockTimeout, TouchFile

tf = TouchFile(sys.argv[1])
start = time.monotonic()
try:
    tf.acquire(timeout=0.05)
except LockTimeout:
    print("timeout", round(time.monotonic() - start, 1))
print("native", tf.native)
print("urg untouched", handler_of(signal.SIGURG) is None)
print("rt ours", handler_of(signal.SIGRTMIN + 4) is not None)
