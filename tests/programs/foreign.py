"""A child program of tests/test_signals.py::test_foreign_handler_falls_back_to_polling
(see that test for what it pins)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import warnings

from sigaction import add_sa_restart

from touchfile import LockTimeout, TouchFile

warnings.simplefilter("always")
when = sys.argv[2]


def foreign(signum: int, frame: object) -> None:
    pass


if when == "before":
    signal.signal(signal.SIGURG, foreign)
if when == "ignored":
    signal.signal(signal.SIGURG, signal.SIG_IGN)
tf = TouchFile(sys.argv[1])
if when == "after":
    with contextlib.suppress(LockTimeout):
        tf.acquire(timeout=0.01)
    print("native-before", tf.native)
    signal.signal(signal.SIGURG, foreign)
if when == "restart":
    with contextlib.suppress(LockTimeout):
        tf.acquire(timeout=0.01)
    add_sa_restart(signal.SIGURG)  # on touchfile's own handler
with warnings.catch_warnings(record=True) as caught:
    start = time.monotonic()
    try:
        tf.acquire(timeout=0.1)
    except LockTimeout:
        print("timeout", round(time.monotonic() - start, 2))
print("native", tf.native)
print("warned", [str(w.message)[:80] for w in caught])
print("ignored", signal.getsignal(signal.SIGURG) == signal.SIG_IGN)
print("warned at", [os.path.basename(w.filename) for w in caught])
