"""Takes an exclusive lock on argv[1], passes it to a child (sleep 30) and
closes its own copy; prints the child's pid, and kills it at a line on stdin
(tests/test_cli.py::test_holders_omits_a_taker_that_passed_the_lock_on)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
child = subprocess.Popen(["sleep", "30"], pass_fds=[fd])
os.close(fd)
# Popen returns as soon as exec closes its pipe, before the kernel has set
# up the new program's arguments: until then /proc/PID/cmdline is empty.
while True:
    with open(f"/proc/{child.pid}/cmdline", "rb") as f:
        if f.read():
            break
    time.sleep(0.001)
print(child.pid, flush=True)
sys.stdin.readline()
child.kill()
child.wait()
