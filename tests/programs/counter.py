"""A child program of tests/test_cli.py::test_signal_is_passed_on_to_the_command
(see that test for what it pins)."""

from __future__ import annotations

import signal
import sys
import time

count = 0


def on(signum: int, frame: object) -> None:
    global count
    count += 1


signal.signal(int(sys.argv[1]), on)
print("ready", flush=True)
while not count:
    time.sleep(0.01)
time.sleep(0.3)
sys.exit(10 + count)
