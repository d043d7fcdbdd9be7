"""A child program of tests/test_faults.py::test_killed_waiter_leaves_nothing
(see that test for what it pins)."""

from __future__ import annotations

import sys

from touchfile import TouchFile

tf = TouchFile(sys.argv[1])
print("waiting", flush=True)
tf.acquire()
print("acquired", flush=True)
