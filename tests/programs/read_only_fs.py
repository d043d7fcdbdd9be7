"""A child program of tests/test_faults.py::test_read_only_file_system
(see that test for what it pins)."""

from __future__ import annotations

import errno
import sys

from touchfile import SHARED, LockTimeout, TouchFile

existing, missing = sys.argv[1:]
with TouchFile(existing) as tf:
    with tf.lock(SHARED, timeout=1):
        print("shared lock taken")
    try:
        tf.acquire(timeout=0.05)
    except LockTimeout:
        print("exclusive timed out")
try:
    TouchFile(missing)
except OSError as error:
    print(errno.errorcode[error.errno or 0], error.filename == missing)
