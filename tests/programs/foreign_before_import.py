"""A child program of tests/test_faults.py::test_foreign_handler_before_import
(see that test for what it pins)."""

from __future__ import annotations

import signal
import sys
import time
import warnings

signal.signal(signal.SIGURG, lambda signum, frame: None)
# Imported only now: the foreign handler must be there before touchfile is.
from touchfile import LockTimeout, TouchFile  # noqa: E402

tf = TouchFile(sys.argv[1])
print("native", tf.native)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        start = time.monotonic()
        try:
            tf.acquire(timeout=0.05)
        except LockTimeout:
            print("timeout", 0.05 <= time.monotonic() - start < 1)
print("warnings", len(caught), caught[0].category.__name__)
