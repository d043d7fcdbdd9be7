"""A model of who holds what, checked against the kernel after every step.

A hypothesis state machine drives three TouchFile objects (two on one path,
one on another) from three worker threads, "actors" (locks are owned per
thread), through acquire, release, timeouts, contexts, close and fork. After
every step it asks the kernel, through a fresh open file description, whether
each path is free, shared or exclusive, and asks each actor what it holds.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TypeVar, Union

import pytest
from helpers import probe, wait_until
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from touchfile import (
    EXCLUSIVE,
    SHARED,
    Context,
    LockCancelled,
    LockError,
    LockTimeout,
    LockType,
    TouchFile,
)

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling

T = TypeVar("T")
Kind = Union[LockType, str]

ACTORS = 3
# The path (index into the machine's paths) of each TouchFile slot: slots 0 and
# 1 are two objects on one file, which exclude each other as two processes do.
SLOTS = (0, 0, 1)
# A wait that should end "at once" (cancel, close, a grant) must end within
# this: generous, as the machine may share the CPU with other tests.
PROMPT = 1.0
# A pending waiter's own timeout: a safety net, never reached when all is well.
LONG = 10.0
FORKS = 3  # at most, per run of the machine

KINDS = st.sampled_from([SHARED, EXCLUSIVE, "shared", "exclusive"])
# How an acquire is bounded: (timeout, context) as below, in _bounds().
HOWS = st.sampled_from(
    ["try", "try", "timeout-5ms", "timeout-20ms", "ctx-10ms", "ctx-expired", "ctx-cancelled"]
)


class Actor:
    """A worker thread that runs the calls it is given, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()

        def call() -> None:
            try:
                result = fn()
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)

        self._calls.put(call)
        return future

    def run(self, fn: Callable[[], T]) -> T:
        return self.submit(fn).result(timeout=LONG + PROMPT)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call()

    def stop(self) -> None:
        self._calls.put(None)
        self.thread.join(LONG + PROMPT)


@dataclass
class Outcome:
    """What one acquire (or release) did: the error it raised, and how long it took."""

    error: LockError | None
    elapsed: float


def attempt(fn: Callable[[], object]) -> Outcome:
    """Run fn, catching the LockError family (anything else fails the test)."""
    start = time.monotonic()
    try:
        fn()
    except LockError as error:
        return Outcome(error, time.monotonic() - start)
    return Outcome(None, time.monotonic() - start)


def promptly(future: Future[T], what: str) -> T:
    """The result of a wait that must end at once (within PROMPT) by now."""
    try:
        return future.result(timeout=PROMPT)
    except concurrent.futures.TimeoutError:
        raise AssertionError(f"{what}: still waiting after {PROMPT} s") from None


def _bounds(how: str) -> tuple[float | None, Context | None, float]:
    """(timeout, ctx, the shortest a timed-out wait may last) for an acquire made now."""
    if how == "try":
        return 0, None, 0.0
    if how.startswith("timeout-"):
        seconds = int(how[8:-2]) / 1000
        return seconds, None, seconds
    if how == "ctx-10ms":
        return None, Context.with_timeout(0.01), 0.01
    if how == "ctx-expired":
        return 5.0, Context.with_deadline(time.monotonic() - 1), 0.0
    ctx = Context.with_cancel()
    ctx.cancel()
    return 5.0, ctx, 0.0


def _blocked_on(path: str) -> bool:
    """Does the kernel list a flock() request blocked on path's file (/proc/locks)?"""
    st_ = os.stat(path)
    key = f"{os.major(st_.st_dev):02x}:{os.minor(st_.st_dev):02x}:{st_.st_ino}"
    with open("/proc/locks") as f:
        # "1: -> FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"
        return any(
            fields[1:3] == ["->", "FLOCK"] and fields[6] == key
            for fields in (line.split() for line in f)
            if len(fields) >= 7
        )


def _fork_child(report: int, tfs: list[TouchFile], paths: list[str], kind: Kind) -> NoReturn:
    """In a child forked by an actor: look at the locks, write a report, _exit.

    The parent is multithreaded, so the child keeps to what cannot wait on a
    lock another thread held at fork(): os-level probes, and TouchFile calls
    that (after touchfile's fork handler has run) touch no lock the parent's
    threads use: locked(), release() and a timeout=0 acquire take no mutex,
    and close() takes only the mutex the fork handler made anew.
    """
    status = 1
    try:
        probes = [[probe(path, "exclusive"), probe(path, "shared")] for path in paths]
        seen = []
        for tf in tfs:
            locked = tf.locked()
            released = attempt(tf.release).error
            took = attempt(partial(tf.acquire, kind, 0)).error
            if took is None:
                tf.release()
            tf.close()
            seen.append([locked, type(released).__name__, type(took).__name__])
        os.write(report, json.dumps({"probes": probes, "tfs": seen}).encode())
        status = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(report, traceback.format_exc().encode())
    finally:
        os._exit(status)


def fork_and_report(tfs: list[TouchFile], paths: list[str], kind: Kind) -> tuple[int, str]:
    """Fork (from the calling thread); the child's exit status and report."""
    read_end, write_end = os.pipe()
    try:
        with warnings.catch_warnings():
            # 3.12+ warns about fork() in a multithreaded process; the child
            # keeps to what is safe there (see _fork_child).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _fork_child(write_end, tfs, paths, kind)
        os.close(write_end)
        write_end = -1
        end = time.monotonic() + LONG
        while True:  # the report is small: the child never blocks writing it
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > end:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child hung")
            time.sleep(0.001)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@dataclass
class Pending:
    """An acquire blocked behind a conflicting holder (at most one at a time)."""

    actor: int
    slot: int
    kind: LockType
    future: Future[Outcome]
    cancel: Context  # the context whose cancel() ends it: its own, or its parent
    submitted: float


class LockMachine(RuleBasedStateMachine):
    """Actors take and give back locks; the model says what each path's kernel state must be."""

    def __init__(self) -> None:
        super().__init__()
        self.native = os.environ["TOUCHFILE_NATIVE"] == "1"
        self.directory = tempfile.mkdtemp(prefix="touchfile-model-")
        self.paths = [os.path.join(self.directory, name) for name in ("a.lock", "b.lock")]
        self.actors = [Actor(f"actor-{i}") for i in range(ACTORS)]
        self.tfs = [TouchFile(self.paths[path]) for path in SLOTS]
        assert all(tf.native == self.native for tf in self.tfs)
        self.held: dict[tuple[int, int], LockType] = {}  # (actor, slot) -> kind
        self.closed: set[int] = set()
        self.pending: Pending | None = None
        self.forks = 0

    # ---- the model ---------------------------------------------------------

    def free_actor(self, i: int) -> int:
        """The i-th actor (modulo) among those not blocked in a pending acquire."""
        free = [a for a in range(ACTORS) if self.pending is None or a != self.pending.actor]
        return free[i % len(free)]

    def blockers(
        self, kind: LockType, path: int, me: tuple[int, int] | None = None
    ) -> list[tuple[int, int]]:
        """The (actor, slot)s, other than me, whose locks on path conflict with kind.

        Every (actor, slot) holds through its own open file description, so
        one actor holding through another object on the same path conflicts
        too, as another process would.
        """
        return sorted(
            who
            for who, held in self.held.items()
            if who != me and SLOTS[who[1]] == path and EXCLUSIVE in (kind, held)
        )

    def conflicts(self, kind: LockType, path: int, me: tuple[int, int] | None = None) -> bool:
        return bool(self.blockers(kind, path, me))

    def pending_blockers(self) -> list[tuple[int, int]]:
        """Who keeps the pending waiter waiting."""
        p = self.pending
        return [] if p is None else self.blockers(p.kind, SLOTS[p.slot], (p.actor, p.slot))

    def state(self, path: int) -> str:
        kinds = {kind for (_, slot), kind in self.held.items() if SLOTS[slot] == path}
        return "exclusive" if EXCLUSIVE in kinds else "shared" if kinds else "free"

    def settle(self) -> None:
        """After holders went away: a pending waiter now free to go must get the lock."""
        p = self.pending
        if p is None or self.conflicts(p.kind, SLOTS[p.slot], (p.actor, p.slot)):
            return
        outcome = promptly(p.future, "the waiter, once no holder was in its way")
        self.pending = None
        assert outcome.error is None, outcome.error
        self.held[p.actor, p.slot] = p.kind

    def expect_misuse(self, outcome: Outcome, slot: int) -> None:
        """A closed object, or one this actor holds already: LockError itself, at once."""
        assert type(outcome.error) is LockError, outcome.error
        assert outcome.error.path == self.tfs[slot].path
        assert outcome.elapsed < PROMPT

    # ---- rules -------------------------------------------------------------

    @rule(actor=st.integers(0, ACTORS - 1), slot=st.sampled_from(range(len(SLOTS))), kind=KINDS,
          how=HOWS)  # fmt: skip
    def acquire(self, actor: int, slot: int, kind: Kind, how: str) -> None:
        """acquire() with a timeout or a context: granted if no other holder on the
        path conflicts, else LockTimeout no sooner than the deadline; LockError on a
        closed object or one this actor holds; a context already done fails at once."""
        a, tf, k = self.free_actor(actor), self.tfs[slot], LockType(kind)

        def call() -> tuple[Outcome, float]:
            start = time.monotonic()
            timeout, ctx, least = _bounds(how)  # a context's clock starts here
            outcome = attempt(lambda: tf.acquire(kind, timeout, ctx))
            outcome.elapsed = time.monotonic() - start
            return outcome, least

        outcome, least = self.actors[a].run(call)
        error = outcome.error
        timeout_only = how.startswith("timeout-")
        if how in ("ctx-expired", "ctx-cancelled"):
            # A context that is done fails the acquire at once, even on a free lock.
            assert outcome.elapsed < PROMPT
            if slot in self.closed or (a, slot) in self.held:
                assert isinstance(error, LockError), error  # which error comes first is open
                return
            wanted = LockTimeout if how == "ctx-expired" else LockCancelled
            assert type(error) is wanted, error
            assert (error.path, error.kind, error.waited) == (tf.path, k, 0.0)
        elif slot in self.closed or (a, slot) in self.held:
            self.expect_misuse(outcome, slot)
        elif self.conflicts(k, SLOTS[slot]):
            assert type(error) is LockTimeout, error
            assert (error.path, error.kind) == (tf.path, k)
            # waited counts from the call; a context's deadline, from its making.
            assert (least if timeout_only else 0.0) <= error.waited <= outcome.elapsed
            assert least <= outcome.elapsed < least + PROMPT
        else:
            assert error is None, error
            assert outcome.elapsed < PROMPT
            self.held[a, slot] = k

    @rule(actor=st.integers(0, ACTORS - 1), slot=st.sampled_from(range(len(SLOTS))))
    def release(self, actor: int, slot: int) -> None:
        """release() gives back this actor's lock on the object; LockError if it has none."""
        a, tf = self.free_actor(actor), self.tfs[slot]
        outcome = self.actors[a].run(lambda: attempt(tf.release))
        if self.held.pop((a, slot), None) is None:
            self.expect_misuse(outcome, slot)
        else:
            assert outcome.error is None, outcome.error
        self.settle()

    @rule(actor=st.integers(0, ACTORS - 1), slot=st.sampled_from(range(len(SLOTS))), kind=KINDS)
    def with_lock(self, actor: int, slot: int, kind: Kind) -> None:
        """tf.lock() as a context manager: inside, the kernel sees the lock; after, it is gone."""
        a, tf, k = self.free_actor(actor), self.tfs[slot], LockType(kind)
        path = self.paths[SLOTS[slot]]

        def inside() -> list[bool]:
            return [tf.locked(), probe(path, "exclusive"), probe(path, "shared")]

        def call() -> tuple[Outcome, list[bool]]:
            seen: list[bool] = []

            def use() -> None:
                with tf.lock(kind, timeout=0):
                    seen.extend(inside())

            return attempt(use), seen

        outcome, seen = self.actors[a].run(call)
        if slot in self.closed or (a, slot) in self.held:
            self.expect_misuse(outcome, slot)
        elif self.conflicts(k, SLOTS[slot]):
            assert type(outcome.error) is LockTimeout, outcome.error
            assert seen == []  # the block never ran
        else:
            assert outcome.error is None, outcome.error
            assert seen == [True, False, k is SHARED and self.state(SLOTS[slot]) != "exclusive"]

    @precondition(lambda self: self.pending is None)
    @rule(actor=st.integers(0, ACTORS - 1), slot=st.sampled_from(range(len(SLOTS))), kind=KINDS,
          via_parent=st.booleans())  # fmt: skip
    def start_waiter(self, actor: int, slot: int, kind: Kind, via_parent: bool) -> None:
        """An acquire with a context and a long timeout: it blocks if the lock is busy."""
        a, tf, k = self.free_actor(actor), self.tfs[slot], LockType(kind)
        root = Context.with_cancel()
        ctx = Context.with_cancel(parent=root) if via_parent else root
        submitted = time.monotonic()
        future = self.actors[a].submit(lambda: attempt(lambda: tf.acquire(kind, LONG, ctx)))
        if slot in self.closed or (a, slot) in self.held:
            self.expect_misuse(promptly(future, "acquire (misuse)"), slot)
        elif not self.conflicts(k, SLOTS[slot]):
            outcome = promptly(future, "acquire of a free lock")
            assert outcome.error is None, outcome.error
            self.held[a, slot] = k
        else:
            self.pending = Pending(a, slot, k, future, root, submitted)
            if self.native:
                # Let it get as far as the kernel: the grant or the cancel that
                # follows must then wake a thread blocked in flock().
                path = self.paths[SLOTS[slot]]
                wait_until(lambda: future.done() or _blocked_on(path), timeout=PROMPT)
            else:
                time.sleep(0.003)  # let it make its first polls
            assert not future.done(), future.result()

    @precondition(lambda self: self.pending is not None)
    @rule(by=st.sampled_from(["release", "cancel", "close"]), actor=st.integers(0, ACTORS - 1))
    def end_waiter(self, by: str, actor: int) -> None:
        """The pending waiter gets the lock, at once, when every holder in its way
        releases; ends with LockCancelled, at once, when its context (or the
        context's parent) is cancelled; and with LockError when another thread
        closes its TouchFile."""
        p = self.pending
        assert p is not None
        if by == "close":
            self.close_slot(self.free_actor(actor), p.slot)
            return
        blockers = self.pending_blockers()
        # The waiter's actor may block itself, through another object on the
        # same path: its thread is busy waiting, so cannot release that.
        if by == "release" and all(a != p.actor for a, _ in blockers):
            for a, slot in blockers:
                assert self.actors[a].run(partial(attempt, self.tfs[slot].release)).error is None
                del self.held[a, slot]
            self.settle()
            assert self.pending is None
            return
        cancelled = time.monotonic()
        p.cancel.cancel()
        outcome = promptly(p.future, "the waiter, once its context was cancelled")
        self.pending = None
        error = outcome.error
        assert type(error) is LockCancelled, error
        assert (error.path, error.kind) == (self.tfs[p.slot].path, p.kind)
        assert error.waited <= time.monotonic() - p.submitted
        assert time.monotonic() - cancelled < PROMPT

    @precondition(lambda self: len(self.closed) < len(SLOTS))
    @rule(actor=st.integers(0, ACTORS - 1), i=st.integers(0, len(SLOTS) - 1), twice=st.booleans())
    def close(self, actor: int, i: int, twice: bool) -> None:
        """close() from any thread gives back every thread's lock on that object
        and ends its waits with LockError; a second close() does nothing."""
        open_slots = [s for s in range(len(SLOTS)) if s not in self.closed]
        self.close_slot(self.free_actor(actor), open_slots[i % len(open_slots)], twice)

    def close_slot(self, a: int, slot: int, twice: bool = False) -> None:
        """Actor a closes the object in slot (twice: then again), and the model follows."""
        tf = self.tfs[slot]
        for _ in range(1 + twice):
            assert self.actors[a].run(lambda: attempt(tf.close)).error is None
            assert tf.closed
        self.closed.add(slot)
        self.held = {who: kind for who, kind in self.held.items() if who[1] != slot}
        p = self.pending
        if p is not None and p.slot == slot:
            outcome = promptly(p.future, "the waiter, once its TouchFile was closed")
            self.pending = None
            assert type(outcome.error) is LockError, outcome.error
            assert outcome.error.path == tf.path
        self.settle()

    @precondition(lambda self: self.closed)
    @rule(i=st.integers(0, len(SLOTS) - 1))
    def reopen(self, i: int) -> None:
        """A closed slot gets a new TouchFile on the same path."""
        slot = sorted(self.closed)[i % len(self.closed)]
        self.tfs[slot] = TouchFile(self.paths[SLOTS[slot]])
        self.closed.discard(slot)

    # A fork costs ~10 ms here: a few per run, each while something is held.
    @precondition(lambda self: self.held and self.forks < FORKS)
    @rule(actor=st.integers(0, ACTORS - 1), kind=KINDS)
    def fork(self, actor: int, kind: Kind) -> None:
        """An actor forks. The child sees the kernel state the parent does; it
        holds nothing, even as the thread that took the parent's locks; it can
        neither release nor break them (release, close, exit); and it takes a
        lock as another process would."""
        a, k = self.free_actor(actor), LockType(kind)
        self.forks += 1
        status, report = self.actors[a].run(lambda: fork_and_report(self.tfs, self.paths, kind))
        assert status == 0, report
        seen = json.loads(report)
        assert seen["probes"] == [
            [self.state(path) == "free", self.state(path) != "exclusive"]
            for path in range(len(self.paths))
        ]
        for slot, (locked, released, took) in enumerate(seen["tfs"]):
            assert not locked
            assert released == "LockError"
            if slot in self.closed:
                assert took == "LockError"
            else:
                assert took == ("LockTimeout" if self.conflicts(k, SLOTS[slot]) else "NoneType")
        # The invariants, next, check that the parent still holds what it held.

    # ---- invariants --------------------------------------------------------

    @invariant()
    def kernel_agrees(self) -> None:
        """A newcomer's flock(LOCK_NB) on each path succeeds exactly as the model says."""
        for path in range(len(self.paths)):
            state = self.state(path)
            assert probe(self.paths[path], "exclusive") == (state == "free"), state
            assert probe(self.paths[path], "shared") == (state != "exclusive"), state

    @invariant()
    def actors_see_their_own_locks(self) -> None:
        """locked() in each actor's thread says what that actor holds, per object."""
        for a in range(ACTORS):
            if self.pending is not None and a == self.pending.actor:
                assert not self.pending.future.done()  # still blocked
                continue
            seen = self.actors[a].run(lambda: [tf.locked() for tf in self.tfs])
            assert seen == [(a, slot) in self.held for slot in range(len(SLOTS))]
        assert [tf.closed for tf in self.tfs] == [s in self.closed for s in range(len(SLOTS))]

    def teardown(self) -> None:
        try:
            if self.pending is not None:
                self.pending.cancel.cancel()
            for tf in self.tfs:
                tf.close()
        finally:
            for actor in self.actors:
                actor.stop()
            shutil.rmtree(self.directory, ignore_errors=True)
        assert not any(actor.thread.is_alive() for actor in self.actors)


# Older hypothesis releases leave it untyped; newer ones type it.
run_machine: Callable[..., None] = run_state_machine_as_test


# A passing run takes ~10 s. A failing one shrinks its example, and each
# failing try may wait out PROMPT: minutes, which the usual 60 s would cut short.
@pytest.mark.timeout(600)
def test_lock_machine() -> None:
    """Any sequence of acquires, releases, timeouts, cancels, closes and forks by
    several threads leaves the kernel's locks exactly as a simple model predicts."""
    threads = threading.active_count()
    run_machine(
        LockMachine,
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None, database=None),
    )
    assert threading.active_count() <= threads
