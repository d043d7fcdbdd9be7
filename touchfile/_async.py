"""Lock waits for asyncio tasks, blocking in the kernel without blocking the loop.

The first try is made on the event loop (a free lock costs no thread). A
lock that is busy is waited for in one of touchfile's own threads, exactly
as a thread's wait is (a blocked flock(), ended by the native interrupt), so
the loop's default executor is never used. When the task is cancelled, the
loop cancels that wait through a Context and raises CancelledError at once,
without waiting for the thread; whichever side comes second, the task's or
the thread's, gives back a lock that was granted at the same moment.

Threads: one per wait in progress (a blocked wait needs its own thread; it
costs no CPU). They are reused, and one idle for IDLE_SECONDS exits, so
their number is bounded by the number of waits in progress at once.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import queue
import threading
from typing import TYPE_CHECKING, Callable

from ._acquire import Request, begin
from ._context import Context

if TYPE_CHECKING:
    from ._lock import LockBase

IDLE_SECONDS = 10.0


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


class _State:
    """One wait in a thread; settled by the thread or abandoned by the task."""

    __slots__ = ("abandoned", "error", "finished", "mutex", "request")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.abandoned = False  # the task has gone (cancelled)
        self.finished = False  # the thread's wait has ended ...
        self.error: BaseException | None = None  # ... with this error, or the lock
        self.request: Request | None = None  # what the thread waited with


async def acquire(lk: LockBase, kind: object, timeout: object, ctx: Context | None) -> None:
    """acquire_async(): the first try on the loop, a wait in a thread. Over a
    network (PostgreSQL) the try is a round trip too, and goes to the thread."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("acquire_async() must be awaited in an asyncio task")
    lk._async = True
    locks = lk._locks
    if locks.backend.remote:
        await _in_thread(lambda: begin(locks, kind, timeout, ctx, task, commit=False), ctx)
        return
    request = begin(locks, kind, timeout, ctx, task)
    if request is not None:
        await _in_thread(lambda: request, ctx)


async def _in_thread(start: Callable[[], Request | None], ctx: Context | None) -> None:
    """start() and the request's wait() in a thread, then hold() in the
    task; raise as they do."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    stop = Context.with_cancel(parent=ctx)  # cancelled with the task
    state = _State()

    def wait() -> None:  # in a thread
        error: BaseException | None = None
        request = None
        try:
            request = start()
            assert request is not None
            with state.mutex:
                state.request = request
            request.wait(stop)
        except BaseException as e:
            error = e
        with state.mutex:
            state.finished, state.error = True, error
            abandoned = state.abandoned
        if not abandoned:
            try:
                loop.call_soon_threadsafe(_settle, done, error)
                return
            except RuntimeError:  # the loop is closed: nobody will take the lock
                pass
        if request is not None:
            request.abandon()

    _threads.run(wait)
    try:
        await done
        request = state.request
        assert request is not None
        request.hold()
    except asyncio.CancelledError:
        with state.mutex:
            state.abandoned = True
            finished, request = state.finished, state.request
        if not finished:
            stop.cancel()  # the thread ends its wait, and gives the handle back
        elif request is not None:  # granted (or failed) as we were cancelled: give it back
            request.abandon()
        raise
    except BaseException:
        if state.request is not None:
            state.request.abandon()  # the wait failed (or hold() did not happen): nothing is held
        raise
    request.check_closed()


async def release(lk: LockBase) -> None:
    """release() by the current task, its round trip in a thread."""
    locks = lk._locks
    owner = lk._owner()
    handle = locks.held.pop(owner, None)
    if handle is None:
        raise locks.not_held(owner)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def put_back() -> None:  # in a thread
        error: BaseException | None = None
        try:
            locks.put_back(handle)  # LockLost, if the hold had been lost
        except BaseException as e:
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            loop.call_soon_threadsafe(_settle, done, error)

    _threads.run(put_back)
    await done


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:  # on the loop
    if not done.done():
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
