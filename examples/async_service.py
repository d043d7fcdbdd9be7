"""An asyncio job runner whose lock waits never block its event loop.

    python examples/async_service.py

Each job runs in its own task and needs a resource guarded by a lock file
that another instance of the service (this script run with --other, in a
second process) holds for a while. A heartbeat task ticks every 10 ms
throughout, since waiting tasks block in touchfile's threads, never on the
loop; a job in ``async with tf.lock_async(timeout=5)`` gets the lock the
moment the other instance lets go; a job with ``timeout=0.3`` gives up with
LockTimeout. On shutdown, jobs still waiting are cancelled with task.cancel()
and end at once, the job holding the lock finishes, and no lock is left held
(a non-blocking flock() on a fresh descriptor gets it). Prints the largest
tick gap, the handoff and cancel latencies; exits 1 if any of that did not hold.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from touchfile import LockTimeout, TouchFile

TICK = 0.010  # the heartbeat's period
HOLD = 0.8  # how long the other instance holds the lock
WORK = 0.6  # how long a job works while holding the lock
SHUTDOWN_AFTER = 0.3  # shutdown comes this long into the report job's work
PROMPT = 0.100  # bound on loop stalls, on the handoff and on ending cancelled jobs


def other_instance(path: str) -> None:
    """Another instance of the service: holds the lock HOLD seconds, then lets go."""
    with TouchFile(path) as tf, tf.lock(timeout=10):
        print("holding", flush=True)
        time.sleep(HOLD)
        released = time.monotonic()  # one clock for every process on the machine
    print(f"released {released!r}", flush=True)


@dataclass
class Job:
    """One job, and what became of it."""

    name: str
    timeout: float | None  # for the lock wait; None waits until shutdown
    state: str = "queued"
    got_lock: float = 0.0  # time.monotonic() values
    ended: float = 0.0


class Service:
    """Runs each job in its own task; a job holds the lock while it works."""

    def __init__(self, tf: TouchFile) -> None:
        self.tf = tf
        self.jobs: dict[asyncio.Task[None], Job] = {}
        self.working = asyncio.Event()  # set once some job holds the lock

    def submit(self, job: Job) -> None:
        self.jobs[asyncio.create_task(self.run(job))] = job

    async def run(self, job: Job) -> None:
        job.state = "waiting for the lock"
        try:
            async with self.tf.lock_async(timeout=job.timeout):
                job.got_lock, job.state = time.monotonic(), "working"
                self.working.set()
                await asyncio.sleep(WORK)  # the work on the guarded resource
            job.state = "done"
        except LockTimeout as error:
            job.state = f"gave up: {error}"
        except asyncio.CancelledError:
            job.state = f"cancelled while {job.state}"
            raise
        finally:
            job.ended = time.monotonic()
            print(f"[{job.name}] {job.state}", flush=True)

    async def shutdown(self) -> float:
        """Cancel the jobs still waiting for the lock, let those holding it finish.
        Returns when the cancel was made (time.monotonic())."""
        waiting = [task for task, job in self.jobs.items() if job.state.startswith("waiting")]
        print(f"[service] shutting down: cancelling {len(waiting)} jobs waiting for the lock")
        cancelled_at = time.monotonic()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*self.jobs, return_exceptions=True)
        return cancelled_at


async def heartbeat(gaps: list[float]) -> None:
    last = time.monotonic()
    while True:
        await asyncio.sleep(TICK)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


def lock_is_free(path: str) -> bool:
    """Could a newcomer take the exclusive lock now? Asks through a fresh descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also gives back the probe's own lock
    return True


async def serve(path: str) -> bool:
    other = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--other", path, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert other.stdout is not None
        if await asyncio.wait_for(other.stdout.readline(), 10) != b"holding\n":
            raise RuntimeError("the other instance did not take the lock")
        print(f"[other] process {other.pid} holds {path} for {HOLD} s")
        with TouchFile(path) as tf:
            service = Service(tf)
            gaps: list[float] = []  # between the heartbeat's ticks
            ticker = asyncio.create_task(heartbeat(gaps))
            try:
                report, refresh = Job("report", timeout=5), Job("refresh", timeout=0.3)
                service.submit(report)
                service.submit(refresh)
                await asyncio.wait_for(service.working.wait(), 10)
                line = await asyncio.wait_for(other.stdout.readline(), 10)
                handoff = report.got_lock - float(line.split()[1])
                print(f"[report] got the lock {1e3 * handoff:.2f} ms after the other one let go")
                queued = [Job("reindex-a", timeout=None), Job("reindex-b", timeout=None)]
                for job in queued:  # these wait behind the report job
                    service.submit(job)
                await asyncio.sleep(SHUTDOWN_AFTER)
                cancelled_at = await service.shutdown()
                free = lock_is_free(path)  # before close(), which would release a leftover
            finally:  # no task outlives the TouchFile, even on failure
                tasks = [ticker, *service.jobs]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        status = await asyncio.wait_for(other.wait(), 10)
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()

    ends = [job.ended - cancelled_at for job in queued]
    for job, end in zip(queued, ends):
        print(f"[service] {job.name} ended {1e3 * end:.2f} ms after task.cancel()")
    print(f"[service] the loop ticked {len(gaps)} times; largest gap {1e3 * max(gaps):.1f} ms")
    print(f"[service] lock free after shutdown (non-blocking flock): {free}")
    ok = (
        status == 0
        and max(gaps) < PROMPT
        and 0 <= handoff < PROMPT
        and refresh.state.startswith("gave up: timed out after")
        and report.state == "done"
        and all(job.state == "cancelled while waiting for the lock" for job in queued)
        and max(ends) < PROMPT
        and free
    )
    print("OK" if ok else "FAILED")
    return ok


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="touchfile-service-"))
    try:
        return 0 if asyncio.run(serve(str(tmp / "jobs.lock"))) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--other"]:
        other_instance(sys.argv[2])
    else:
        raise SystemExit(main())
