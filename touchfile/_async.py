"""Lock waits for async tasks (asyncio, uvloop, trio, and anyio on either),
blocking in the kernel without blocking the event loop.

The first try is made on the loop (a free lock costs no thread). A lock that
is busy is waited for in one of touchfile's own threads, exactly as a
thread's wait is (a blocked flock(), ended by the native interrupt), so the
library's own worker threads are never used. When the task is cancelled (a
task.cancel(), a trio or anyio cancel scope), that wait is cancelled through
a Context at once, without waiting for the thread; whichever side comes
second, the task's or the thread's, gives back a lock granted at the same
moment. (On trio, a cancel that comes after the thread has woken the task
cannot be refused: the task takes the lock, and trio delivers the cancel at
its next checkpoint, which a ``lock_async()`` block's exit survives.)

Threads: one per wait in progress (a blocked wait needs its own thread; it
costs no CPU). They are reused, and one idle for IDLE_SECONDS exits, so
their number is bounded by the number of waits in progress at once.
"""

from __future__ import annotations

import _thread
import asyncio
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from ._acquire import Request, begin
from ._context import Context

if TYPE_CHECKING:
    from ._lock import LockBase

IDLE_SECONDS = 10.0
T = TypeVar("T")


class _Threads:
    """Threads that run blocking lock waits, started as needed and reused."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._idle = 0

    def run(self, job: Callable[[], None]) -> None:
        with self._mutex:
            if self._idle:
                self._idle -= 1  # that thread will take the job
                self._jobs.put(job)
                return
        # Not threading.Thread().start(): it waits until the new thread runs,
        # which on a busy machine would stall the event loop for a time slice.
        _thread.start_new_thread(self._work, (job,))

    def _work(self, job: Callable[[], None]) -> None:
        while True:
            job()
            with self._mutex:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._mutex:
                    try:  # a job given to us just as we timed out
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


_threads = _Threads()


def reset_after_fork() -> None:
    global _threads
    _threads = _Threads()  # the parent's threads do not exist in the child


def current_task() -> object | None:
    """The running asyncio or trio task (anyio runs on either), or None."""
    loop = asyncio._get_running_loop()
    if loop is not None:
        return asyncio.current_task(loop)
    trio = sys.modules.get("trio")  # never imported here: a trio task has done so
    if trio is not None:
        try:
            return trio.lowlevel.current_task()  # type: ignore[no-any-return]
        except RuntimeError:  # not in a trio task
            pass
    return None


class _Waker(Protocol):
    """How a thread wakes the task that sleeps until its job ends."""

    def wake(self, error: BaseException | None) -> bool:
        """From the thread: wake the task, raising error in it if one is
        given. False if it cannot be done (the loop is gone)."""

    async def sleep(self, on_cancel: Callable[[], bool]) -> None:
        """In the task: sleep until woken. If the task is cancelled first,
        call on_cancel(): True means the thread will not wake it, and the
        cancel is raised at once; False, that a wake is coming."""

    def soon(self, fn: Callable[[], None]) -> None:
        """In the task: call fn() once the task has gone on (its cancel
        raised), without waiting for anything else."""


class _AsyncioWaker:
    __slots__ = ("done", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def wake(self, error: BaseException | None) -> bool:
        try:
            self.loop.call_soon_threadsafe(_settle, self.done, error)
        except RuntimeError:  # the loop is closed
            return False
        return True

    async def sleep(self, on_cancel: Callable[[], bool]) -> None:
        try:
            await self.done
        except BaseException:
            if not self.done.done() or self.done.cancelled():
                on_cancel()  # asyncio cannot refuse a cancel: always raised
            raise

    def soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon(fn)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:  # on the loop
    if not done.done():
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class _TrioWaker:
    __slots__ = ("task", "token", "trio")

    def __init__(self) -> None:
        import trio

        self.trio = trio
        self.task = trio.lowlevel.current_task()
        self.token = trio.lowlevel.current_trio_token()

    def wake(self, error: BaseException | None) -> bool:
        import outcome  # trio's own dependency

        result = outcome.Value(None) if error is None else outcome.Error(error)
        try:
            self.token.run_sync_soon(self.trio.lowlevel.reschedule, self.task, result)
        except self.trio.RunFinishedError:
            return False
        return True

    async def sleep(self, on_cancel: Callable[[], bool]) -> None:
        abort = self.trio.lowlevel.Abort

        def on_abort(_: Any) -> Any:
            return abort.SUCCEEDED if on_cancel() else abort.FAILED

        await self.trio.lowlevel.wait_task_rescheduled(on_abort)

    def soon(self, fn: Callable[[], None]) -> None:
        fn()  # (an abort callback: trio raises the cancel once it returns)


def _task(api: str) -> object:
    """The running task, for api (a name in the error when there is none)."""
    task = current_task()
    if task is None:
        raise RuntimeError(
            f"{api} must be awaited in an asyncio or trio task (anyio runs on either)"
        )
    return task


def _waker() -> _Waker:
    """The running task's library's waker (in a task: _task() said so)."""
    return _AsyncioWaker() if asyncio._get_running_loop() is not None else _TrioWaker()


class _Job:
    """One job in a thread; its result goes to the task, or to left() if the
    task has gone."""

    __slots__ = ("abandoned", "finished", "mutex", "result")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.abandoned = False  # the task has gone (cancelled)
        self.finished = False  # the job has ended ...
        self.result: Any = None  # ... with this result (None after an error)


async def _in_thread(job: Callable[[], T], left: Callable[[T], None], stop: Context | None) -> T:
    """Run job() in a thread while the task sleeps, and return its result or
    raise its error. A cancel of the task while the job runs cancels stop and
    leaves the job's result to left(), in the thread; one that comes once
    the job has ended gives its result to left() here (asyncio), or is left
    to the task's next checkpoint (trio)."""
    waker = _waker()
    state = _Job()

    def run() -> None:  # in a thread
        result, error = None, None
        try:
            result = job()
        except BaseException as e:
            error = e
        with state.mutex:
            state.finished, state.result = True, result
            abandoned = state.abandoned
        if (abandoned or not waker.wake(error)) and result is not None:
            left(result)  # nobody will take it

    def on_cancel() -> bool:  # in the task
        with state.mutex:
            if state.finished:
                return False
            state.abandoned = True
        if stop is not None:
            # Ends the job's wait, right after the task has gone on: its
            # thread, woken, would otherwise take the interpreter's lock
            # from the task that is raising the cancel.
            waker.soon(stop.cancel)
        return True

    _threads.run(run)
    try:
        await waker.sleep(on_cancel)
    except BaseException:
        with state.mutex:
            result = None if state.abandoned else state.result
            state.result = None
        if result is not None:  # it ended as the task was cancelled: give it back
            left(result)
        raise
    return state.result  # type: ignore[no-any-return]


async def acquire(lk: LockBase, kind: object, timeout: object, ctx: Context | None) -> None:
    """acquire_async(): the first try on the loop, a wait in a thread. Over a
    network (PostgreSQL) the try is a round trip too, and goes to the thread."""
    task = _task("acquire_async()")
    lk._async = True
    locks = lk._locks
    first = None
    if not locks.backend.remote:
        first = begin(locks, kind, timeout, ctx, task)
        if first is None:
            return  # taken at once
    stop = Context.with_cancel(parent=ctx)  # cancelled with the task

    def wait() -> Request:  # in a thread
        request = first or begin(locks, kind, timeout, ctx, task, commit=False)
        assert request is not None  # (commit=False: a granted Request, never None)
        try:
            request.wait(stop)
        except BaseException:
            request.abandon()  # nothing is held
            raise
        return request

    granted = await _in_thread(wait, Request.abandon, stop)
    try:
        granted.hold()
    except BaseException:
        granted.abandon()
        raise
    granted.check_closed()


async def release(lk: LockBase) -> None:
    """release() by the current task, its round trip in a thread."""
    locks = lk._locks
    owner = _task("release()")  # the owner (acquire_async() made tasks owners here)
    handle = locks.held.pop(owner, None)
    if handle is None:
        raise locks.not_held(owner)
    # LockLost, if the hold had been lost. A cancel does not stop the release.
    await _in_thread(lambda: locks.put_back(handle), _nothing, None)


def _nothing(_: object) -> None:
    pass
