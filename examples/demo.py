"""Two processes take turns on one lock file, and a deadline expires.

    python examples/demo.py

The parent holds the lock while a child process waits for it in the kernel;
the child gets it the moment the parent lets go. Then the parent waits with a
deadline while the child holds on, and gives up when the deadline passes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from touchfile import LockTimeout, TouchFile


def child(path: str) -> None:
    with TouchFile(path) as tf:
        start = time.monotonic()
        print(f"[child]  waiting for {path}", flush=True)
        with tf.lock(timeout=10):
            got = time.monotonic()
            print(f"[child]  got the lock after {got - start:.3f} s; holding it 1 s", flush=True)
            print(f"acquired-at {got}", flush=True)
            time.sleep(1.0)
        print("[child]  released", flush=True)


def main() -> None:
    path = str(Path(tempfile.mkdtemp()) / "demo.lock")
    with TouchFile(path) as tf:
        tf.acquire()
        print(f"[parent] holding {path}", flush=True)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", path], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        print(proc.stdout.readline(), end="", flush=True)  # the child is waiting
        time.sleep(0.5)
        released = time.monotonic()
        tf.release()
        print("[parent] released the lock", flush=True)
        print(proc.stdout.readline(), end="", flush=True)
        got = float(proc.stdout.readline().split()[1])
        print(f"[parent] the child held it {1e6 * (got - released):.0f} µs after the release")
        start = time.monotonic()
        try:
            tf.acquire(timeout=0.3)
            print("[parent] unexpectedly got the lock")
        except LockTimeout as error:
            late = time.monotonic() - start - 0.3
            print(f"[parent] {error} (deadline overshoot {1e6 * late:.0f} µs)")
        with tf.lock(timeout=5):
            print("[parent] got it back once the child let go")
        print(proc.stdout.read(), end="")
        proc.wait()
    Path(path).unlink()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main()
