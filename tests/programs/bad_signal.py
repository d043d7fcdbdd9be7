"""A child program of tests/test_signals.py::test_bad_interrupt_signal
(see that test for what it pins)."""

from __future__ import annotations

import sys

import touchfile

try:
    touchfile.TouchFile(sys.argv[1])
except ValueError as error:
    print(error)
