"""A lock holder for tests/helpers.py's Holder, taking the lock with touchfile: says
"locked", releases when a line arrives on stdin (printing the time.monotonic()
of the release), then exits at the next line. argv: PATH KIND."""

from __future__ import annotations

import sys
import time

from touchfile import TouchFile

tf = TouchFile(sys.argv[1])
tf.acquire(sys.argv[2])
print("locked", flush=True)
sys.stdin.readline()
t = time.monotonic()
tf.release()
print(t, flush=True)
sys.stdin.readline()
