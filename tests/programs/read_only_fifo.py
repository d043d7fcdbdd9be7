"""A child program of tests/test_faults.py::test_read_only_fifo_does_not_hang
(see that test for what it pins)."""

from __future__ import annotations

import fcntl
import os
import signal
import sys

from touchfile import TouchFile


class Hung(Exception):
    pass


def on_alarm(signum: int, frame: object) -> None:
    raise Hung


signal.signal(signal.SIGALRM, on_alarm)
signal.alarm(1)
try:
    tf = TouchFile(sys.argv[1])
    tf.acquire(timeout=1)
except Hung:
    print("hung")
    sys.exit(1)
signal.alarm(0)
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("not excluded")
except BlockingIOError:
    print("locked")
