"""One cancel() ends every worker thread's lock wait at once.

    python examples/worker_pool_cancel.py

The main thread holds the exclusive lock. A pool of worker threads all wait
for the same lock, some for a shared lock and some for an exclusive one (a
lock belongs to the thread that takes it, so the workers are kept out exactly
as other processes would be). Every worker passes the same
``Context.with_cancel()`` as ``ctx=``; a supervisor thread calls ``cancel()``
once, and every wait ends with LockCancelled. The example prints how long
after cancel() each worker's wait ended, and checks that none of them got the
lock and that all ended within 100 ms.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from touchfile import EXCLUSIVE, SHARED, Context, LockCancelled, LockType, TouchFile

WORKERS = 8
WAIT_FIRST = 0.3  # how long the workers wait before the supervisor cancels
PROMPT = 0.1  # every wait must end within this many seconds of cancel()


@dataclass
class Outcome:
    """How one worker's wait ended."""

    worker: int
    kind: LockType
    result: str  # "cancelled", or "GOT THE LOCK"
    waited: float  # seconds, as LockCancelled reports it
    ended: float  # time.monotonic() when the worker saw the wait end


def worker(n: int, tf: TouchFile, ctx: Context, started: threading.Barrier) -> Outcome:
    kind = SHARED if n % 2 else EXCLUSIVE
    started.wait()
    try:
        tf.acquire(kind, ctx=ctx)  # no timeout: only the context can end this wait
    except LockCancelled as error:
        return Outcome(n, kind, "cancelled", error.waited, time.monotonic())
    ended = time.monotonic()
    tf.release()
    return Outcome(n, kind, "GOT THE LOCK", 0.0, ended)


def supervisor(ctx: Context, started: threading.Barrier, cancelled_at: list[float]) -> None:
    started.wait()
    time.sleep(WAIT_FIRST)  # the workers are blocked in their waits by now
    cancelled_at.append(time.monotonic())
    ctx.cancel()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="touchfile-pool-"))
    try:
        with TouchFile(tmp / "job.lock") as tf:
            tf.acquire(EXCLUSIVE)
            print(f"[main] holds the exclusive lock on {tf.path}")
            ctx = Context.with_cancel()
            started = threading.Barrier(WORKERS + 1, timeout=10)
            cancelled_at: list[float] = []
            boss = threading.Thread(target=supervisor, args=(ctx, started, cancelled_at))
            boss.start()
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                futures = [pool.submit(worker, n, tf, ctx, started) for n in range(WORKERS)]
                try:
                    outcomes = [future.result(timeout=10) for future in futures]
                except BaseException:
                    tf.close()  # ends any wait still going, so the pool can shut down
                    raise
            boss.join()
            still_held = tf.locked()
            tf.release()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cancel = cancelled_at[0]
    print(f"[supervisor] cancelled the shared context once, after {WAIT_FIRST:.1f} s")
    for o in outcomes:
        after = 1e3 * (o.ended - cancel)
        print(
            f"[worker {o.worker}] {o.kind.value:9} {o.result} after waiting {o.waited:.3f} s,"
            f" {after:.2f} ms after cancel()"
        )
    slowest = max(o.ended - cancel for o in outcomes)
    got = [o for o in outcomes if o.result != "cancelled"]
    print(f"cancelled: {WORKERS - len(got)} of {WORKERS}; got the lock: {len(got)}")
    print(f"slowest to end: {1e3 * slowest:.2f} ms after cancel()")
    print(f"the main thread still holds the lock: {still_held}")
    ok = not got and slowest < PROMPT and still_held
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
