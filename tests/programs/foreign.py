"""A child program of tests/test_signals.py::test_foreign_handler_falls_back_to_polling
(see that test for what it pins)."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import warnings

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
    import ctypes

    class Sigaction(ctypes.Structure):
        _fields_ = [
            ("handler", ctypes.c_void_p),
            ("mask", ctypes.c_ulong * 16),
            ("flags", ctypes.c_int),
            ("restorer", ctypes.c_void_p),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    with contextlib.suppress(LockTimeout):
        tf.acquire(timeout=0.01)
    act = Sigaction()
    assert libc.sigaction(signal.SIGURG, None, ctypes.byref(act)) == 0
    act.flags |= 0x10000000  # SA_RESTART, on our own handler
    assert libc.sigaction(signal.SIGURG, ctypes.byref(act), None) == 0
with warnings.catch_warnings(record=True) as caught:
    start = time.monotonic()
    try:
        tf.acquire(timeout=0.1)
    except LockTimeout:
        print("timeout", round(time.monotonic() - start, 2))
print("native", tf.native)
print("warned", [str(w.message)[:80] for w in caught])
print("ignored", signal.getsignal(signal.SIGURG) == signal.SIG_IGN)
