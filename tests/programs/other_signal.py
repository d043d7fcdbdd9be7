"""A child program of tests/test_signals.py::test_interrupt_signal_can_be_chosen
(see that test for what it pins)."""

from __future__ import annotations

import ctypes
import signal
import sys
import time

from touchfile import LockTimeout, TouchFile


class Sigaction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


libc = ctypes.CDLL(None)


def handler_of(sig: int) -> int | None:
    act = Sigaction()
    libc.sigaction(sig, None, ctypes.byref(act))
    handler: int | None = act.handler
    return handler


tf = TouchFile(sys.argv[1])
start = time.monotonic()
try:
    tf.acquire(timeout=0.05)
except LockTimeout:
    print("timeout", round(time.monotonic() - start, 1))
print("native", tf.native)
print("urg untouched", handler_of(signal.SIGURG) is None)
print("rt ours", handler_of(signal.SIGRTMIN + 4) is not None)
