"""with_lock() runs a function under the lock, within one deadline shared by several steps.

    python examples/with_lock_deadline.py

A job has a budget of 1 s in all: ``Context.with_timeout(1.0)``, passed as
``ctx=`` to every step. ``tf.with_lock(fn, kind, timeout, ctx)`` takes the lock,
runs ``fn()``, always releases, and returns what fn returned.

1. Reads a counter under a shared lock: with_lock returns the value.
2. Bumps it under the exclusive lock: with_lock returns the new value.
3. Another process now holds the lock. The step asks for ``timeout=10``, but
   the budget ends first: LockTimeout at the budget's deadline, and fn is
   never called (it never runs without the lock).
4. The other process lets go; the lock is free, but the budget is spent:
   LockTimeout at once, fn again not called.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from touchfile import EXCLUSIVE, SHARED, Context, LockTimeout, TouchFile

BUDGET = 1.0  # seconds for the whole job
WORK = 0.2  # how long each successful step works while holding the lock


class Counter:
    """A counter kept in a file, which the lock guards; counts its own calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls = 0
        path.write_text("0")

    def read(self) -> int:
        self.calls += 1
        time.sleep(WORK)
        return int(self.path.read_text())

    def bump(self) -> int:
        self.calls += 1
        time.sleep(WORK)
        value = int(self.path.read_text()) + 1
        self.path.write_text(str(value))
        return value


def holder(lock_path: str) -> None:
    """Take the exclusive lock at the first line on stdin; release it at the next."""
    with TouchFile(lock_path) as tf:
        print("ready", flush=True)
        sys.stdin.readline()
        with tf.lock(EXCLUSIVE, timeout=5):
            print("locked", flush=True)
            sys.stdin.readline()


def tell(proc: subprocess.Popen[str], line: str | None, expect: str = "") -> None:
    """Send the holder process a line (if any), then wait for its answer (if any)."""
    assert proc.stdin is not None and proc.stdout is not None
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    if expect and proc.stdout.readline().strip() != expect:
        raise RuntimeError(f"the holder process did not say {expect!r}")


def give_up(step: str, tf: TouchFile, fn: Callable[[], int], budget: Context) -> bool:
    """Call fn under the lock, expecting the budget to run out first; True if it did."""
    deadline = budget.deadline
    start = time.monotonic()
    try:
        result = tf.with_lock(fn, EXCLUSIVE, timeout=10, ctx=budget)
    except LockTimeout as error:
        ended = time.monotonic()
        print(f"[{step}] LockTimeout: {error}")
        late = ended - deadline
        print(
            f"[{step}] waited {ended - start:.3f} s: ended {1e3 * late:.1f} ms after the "
            "budget's deadline (which came before timeout=10)"
        )
        return late >= 0
    print(f"[{step}] unexpectedly got the lock; fn returned {result}")
    return False


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="touchfile-budget-"))
    lock_path = str(tmp / "counter.lock")
    proc: subprocess.Popen[str] | None = None
    try:
        # The other process starts first, so that its start-up does not eat the budget.
        proc = subprocess.Popen(
            [sys.executable, __file__, "--hold", lock_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        tell(proc, None, expect="ready")
        counter = Counter(tmp / "counter")
        with TouchFile(lock_path) as tf:
            budget = Context.with_timeout(BUDGET)
            print(f"budget: {BUDGET:.1f} s for every step, as one Context")

            value = tf.with_lock(counter.read, SHARED, ctx=budget)
            left = budget.remaining()
            print(f"[step 1] shared lock: read returned {value}; budget left {left:.2f} s")

            value = tf.with_lock(counter.bump, EXCLUSIVE, ctx=budget)
            left = budget.remaining()
            print(f"[step 2] exclusive lock: bump returned {value}; budget left {left:.2f} s")

            tell(proc, "lock", expect="locked")
            print(f"[holder] process {proc.pid} holds the exclusive lock")
            calls = counter.calls
            ok = give_up("step 3", tf, counter.bump, budget)
            print(
                f"[step 3] bump was called {counter.calls - calls} times;"
                f" the counter is still {counter.path.read_text()}"
            )

            tell(proc, "release")
            proc.wait(timeout=10)
            with tf.lock(EXCLUSIVE, timeout=0):
                print("[holder] exited; the lock is free again")
            calls = counter.calls
            start = time.monotonic()
            try:
                tf.with_lock(counter.bump, EXCLUSIVE, ctx=budget)
                print("[step 4] unexpectedly ran with a spent budget")
                ok = False
            except LockTimeout as error:
                waited = time.monotonic() - start
                print(f"[step 4] budget spent: LockTimeout at once ({waited:.3f} s): {error}")
            print(
                f"[step 4] bump was called {counter.calls - calls} times;"
                f" the counter is still {counter.path.read_text()}"
            )
            if counter.calls != 2 or counter.path.read_text() != "1":
                ok = False
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hold"]:
        holder(sys.argv[2])
    else:
        sys.exit(main())
