"""A child program of tests/test_processes.py::test_exec_does_not_inherit_lock
(see that test for what it pins)."""

from __future__ import annotations

import os
import subprocess
import sys

from touchfile import TouchFile

tf = TouchFile(sys.argv[1])
tf.acquire()
child = subprocess.Popen(
    ["sleep", "60"], close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)
print(child.pid, flush=True)
os._exit(0)  # the holder dies without releasing; sleep lives on
