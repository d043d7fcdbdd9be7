"""A child program of tests/test_security.py::test_exclusive_lock_on_nfs_needs_write_access
(see that test for what it pins)."""

from __future__ import annotations

import errno
import sys

from touchfile import SHARED, TouchFile

with TouchFile(sys.argv[1]) as tf:
    with tf.lock(SHARED, timeout=0):
        print("shared")
    try:
        tf.acquire(timeout=0)
    except OSError as error:
        print(errno.errorcode[error.errno or 0], error.filename == sys.argv[1])
