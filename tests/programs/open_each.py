"""A child program of tests/test_faults.py::test_no_permission_unprivileged
(see that test for what it pins)."""

from __future__ import annotations

import fcntl
import os
import sys

from touchfile import TouchFile

for path in sys.argv[1:]:
    try:
        with TouchFile(path) as tf, tf.lock(timeout=1):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                print("locked but not excluding")
            except BlockingIOError:
                print("locked")
            finally:
                os.close(fd)
    except OSError as error:
        print(type(error).__name__, error.filename == path)
