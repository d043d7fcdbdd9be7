"""The public surface: names, arguments, errors, files."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import Holders, hold, probe, run_program

import touchfile
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


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_public_names() -> None:
    """The names the API promises are exported, and nothing else by accident."""
    assert set(touchfile.__all__) == {
        "EXCLUSIVE", "SHARED", "Context", "LockCancelled", "LockError", "LockHolder",
        "LockLost", "LockTimeout", "LockType", "TouchFile", "__version__",
    }  # fmt: skip
    assert [m.name for m in LockType] == ["SHARED", "EXCLUSIVE"]
    assert SHARED is LockType.SHARED and EXCLUSIVE is LockType.EXCLUSIVE
    assert issubclass(LockTimeout, LockError) and issubclass(LockTimeout, TimeoutError)
    assert issubclass(LockCancelled, LockError) and not issubclass(LockCancelled, TimeoutError)
    assert issubclass(touchfile.LockLost, LockError)


def test_native_core_is_built(mode: str) -> None:
    """The installed package carries the native core (so CI tests the native path)."""
    with TouchFile() as tf:
        assert tf.native is (mode == "native")


def test_path_is_absolute_and_file_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path is made absolute; the file is created 0o644 (umask 022)."""
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        tf = TouchFile("rel.lock")
    finally:
        os.umask(old)
    assert tf.path == str(tmp_path / "rel.lock")
    assert stat.S_IMODE(os.stat(tf.path).st_mode) == 0o644
    tf.close()


def test_mode_is_applied(lock_path: str) -> None:
    """mode= sets the permissions of a created lock file (filtered by the umask)."""
    old = os.umask(0)
    try:
        TouchFile(lock_path, mode=0o600).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600


def test_existing_file_never_truncated(lock_path: str) -> None:
    """Opening, locking, releasing and closing leave an existing file's content alone."""
    Path(lock_path).write_text("pid 42\n")
    with TouchFile(lock_path) as tf, tf.lock():
        pass
    assert Path(lock_path).read_text() == "pid 42\n"


def test_lock_file_kept_after_release_and_close(lock_path: str) -> None:
    """Release and close never unlink the lock file (that would let two holders in)."""
    tf = TouchFile(lock_path)
    tf.acquire()
    tf.release()
    assert os.path.exists(lock_path)
    tf.close()
    assert os.path.exists(lock_path)


def test_temporary_lock_file_removed_by_close() -> None:
    """TouchFile() makes a fresh temporary lock file; close() removes it."""
    tf = TouchFile()
    assert os.path.isabs(tf.path) and os.path.exists(tf.path)
    with tf.lock():
        assert not probe(tf.path)
    tf.close()
    assert not os.path.exists(tf.path)


def test_context_manager_closes(lock_path: str) -> None:
    """`with TouchFile(...) as tf` closes it, releasing a lock still held."""
    with TouchFile(lock_path) as tf:
        tf.acquire()
        assert not probe(lock_path)
    assert tf.closed
    assert probe(lock_path)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A lock file in a directory that does not exist: FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="nodir"):
        TouchFile(tmp_path / "nodir" / "x.lock")


def test_empty_path_is_file_not_found() -> None:
    """TouchFile("") is FileNotFoundError, as open("") is (it used to lock the
    current directory)."""
    with pytest.raises(FileNotFoundError) as caught:
        TouchFile("")
    assert caught.value.filename == ""


def test_directory_can_be_locked(tmp_path: Path) -> None:
    """A directory is a valid lock file, as flock(1) allows."""
    with TouchFile(tmp_path) as tf, tf.lock():
        assert not probe(str(tmp_path))


def test_read_only_file_can_be_locked(lock_path: str) -> None:
    """flock() needs no write access: a read-only lock file still locks."""
    Path(lock_path).touch()
    os.chmod(lock_path, 0o444)
    with TouchFile(lock_path) as tf, tf.lock():
        assert not probe(lock_path)


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_bad_timeout_values(lock_path: str, bad: float) -> None:
    """Negative or NaN timeouts are ValueError."""
    with TouchFile(lock_path) as tf, pytest.raises(ValueError, match="timeout"):
        tf.acquire(timeout=bad)
    assert probe(lock_path)


@pytest.mark.parametrize("bad", [True, "1", [1], object()])
def test_bad_timeout_types(lock_path: str, bad: object) -> None:
    """bool and non-number timeouts are TypeError."""
    with TouchFile(lock_path) as tf, pytest.raises(TypeError, match="timeout"):
        tf.acquire(timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["shared ", "read", ""])
def test_bad_kind_values(lock_path: str, bad: str) -> None:
    """Unknown kind names are ValueError."""
    with TouchFile(lock_path) as tf, pytest.raises(ValueError, match="kind"):
        tf.acquire(bad)


@pytest.mark.parametrize("name", ["SHARED", "Shared", "EXCLUSIVE", "exclusive"])
def test_kind_names_in_any_case(lock_path: str, name: str) -> None:
    """A kind's name is taken in any case: "SHARED" is SHARED."""
    with TouchFile(lock_path) as tf, tf.lock(name):
        assert probe(lock_path, "shared") == (name.lower() == "shared")


@pytest.mark.parametrize("timeout", [5, 0.5])
def test_timeout_by_position_hints_at_the_keyword(lock_path: str, timeout: float) -> None:
    """tf.acquire(5), as filelock allows: the TypeError says how to give a timeout."""
    with TouchFile(lock_path) as tf, pytest.raises(TypeError) as raised:
        tf.acquire(timeout)  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"kind must be a LockType (SHARED or EXCLUSIVE), not {timeout!r} "
        f"(a timeout is given by name: timeout={timeout!r})"
    )


def test_with_lock_refuses_async_functions(lock_path: str) -> None:
    """with_lock() of an async function (or of anything that returns an awaitable)
    raises TypeError pointing to with_lock_async(): the work would run later,
    outside the lock. Nothing is left held, and no "never awaited" warning."""

    async def work() -> int:
        return 7

    with TouchFile(lock_path) as tf:
        for fn in (work, functools.partial(work), lambda: work()):
            with pytest.raises(TypeError, match=r"use await tf\.with_lock_async\(fn\)"):
                tf.with_lock(fn)  # type: ignore[unused-coroutine]  # what is refused
            assert not tf.locked() and probe(lock_path)


def test_with_lock_async_refuses_a_plain_result(lock_path: str) -> None:
    """with_lock_async(lambda: 7) says what it expected, and releases."""

    async def main() -> None:
        with TouchFile(lock_path) as tf:
            with pytest.raises(TypeError, match=r"returned 7, which cannot be awaited"):
                await tf.with_lock_async(lambda: 7)  # type: ignore[arg-type, return-value]
            assert not tf.locked() and probe(lock_path)

    asyncio.run(main())


def test_cancelled_context_has_no_time_left() -> None:
    """A cancelled context's remaining() is 0, deadline or not."""
    for ctx in (Context.with_cancel(), Context.with_timeout(60)):
        ctx.cancel()
        assert ctx.remaining() == 0
        assert repr(ctx) == "<Context cancelled>"


def test_release_after_close_says_why(lock_path: str) -> None:
    """release() on a closed TouchFile says "close() released it" only to a
    thread whose lock close() released."""
    tf = TouchFile(lock_path)
    tf.close()
    with pytest.raises(LockError, match=r"holds no lock on .* \(it is closed\)$"):
        tf.release()


@pytest.mark.parametrize("bad", [1, None, True, [], 2.0])
def test_bad_kind_types(lock_path: str, bad: object) -> None:
    """A kind that is not a LockType (or its name) is TypeError, even in lock()."""
    with TouchFile(lock_path) as tf:
        with pytest.raises(TypeError, match="kind"):
            tf.acquire(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="kind"):
            tf.lock(bad)  # type: ignore[arg-type]


def test_kind_by_name(lock_path: str) -> None:
    """The strings "shared" and "exclusive" name the kinds."""
    with TouchFile(lock_path) as tf:
        with tf.lock("shared"):
            assert probe(lock_path, "shared") and not probe(lock_path, "exclusive")
        with tf.lock("exclusive"):
            assert not probe(lock_path, "shared")


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize("bad", ["x", 1, object()])
def test_bad_ctx(lock_path: str, bad: object) -> None:
    """ctx must be a Context."""
    with TouchFile(lock_path) as tf, pytest.raises(TypeError, match="ctx"):
        tf.acquire(ctx=bad)  # type: ignore[arg-type]


def test_bad_mode_and_path(lock_path: str) -> None:
    """mode must be an int; path must be a path."""
    with pytest.raises(TypeError, match="mode"):
        TouchFile(lock_path, mode="644")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TouchFile(42)  # type: ignore[arg-type]


def test_bad_native_setting(lock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """TOUCHFILE_NATIVE accepts 0 and 1 only."""
    monkeypatch.setenv("TOUCHFILE_NATIVE", "yes")
    with pytest.raises(ValueError, match="TOUCHFILE_NATIVE"):
        TouchFile(lock_path)


def test_infinite_timeout_means_none(lock_path: str) -> None:
    """timeout=math.inf is the same as None (and a free lock is taken at once)."""
    with TouchFile(lock_path) as tf, tf.lock(timeout=math.inf):
        assert not probe(lock_path)


def test_release_without_lock(lock_path: str) -> None:
    """release() when this thread holds nothing: LockError."""
    with TouchFile(lock_path) as tf:
        with pytest.raises(LockError, match="holds no lock"):
            tf.release()
        tf.acquire()
        tf.release()
        with pytest.raises(LockError):
            tf.release()


@pytest.mark.parametrize("second", [SHARED, EXCLUSIVE])
@pytest.mark.parametrize("first", [SHARED, EXCLUSIVE])
def test_reacquire_same_thread(lock_path: str, first: LockType, second: LockType) -> None:
    """The holder acquiring again gets LockError at once (no deadlock, no conversion)."""
    with TouchFile(lock_path) as tf, tf.lock(first):
        with pytest.raises(LockError, match="already holds"):
            tf.acquire(second)
        assert tf.locked()
    assert not tf.locked()


def test_lock_release_in_with(lock_path: str) -> None:
    """The lock() guard holds inside the block only, and releases on an exception."""
    with TouchFile(lock_path) as tf:
        with tf.lock():
            assert not probe(lock_path)
        assert probe(lock_path)
        with pytest.raises(RuntimeError), tf.exclusive_lock():
            raise RuntimeError("boom")
        assert probe(lock_path)
        with tf.shared_lock(timeout=1) as same:
            assert same is tf
            assert probe(lock_path, "shared") and not probe(lock_path, "exclusive")


def test_with_lock_runs_under_lock(lock_path: str) -> None:
    """with_lock runs fn holding the lock and returns its result."""
    with TouchFile(lock_path) as tf:
        assert tf.with_lock(lambda: probe(lock_path, "shared"), SHARED, timeout=1) is True
        assert tf.with_lock(lambda: probe(lock_path, "shared")) is False
        assert probe(lock_path)


def test_with_lock_releases_on_error(lock_path: str) -> None:
    """with_lock releases when fn raises, and the error propagates."""

    def boom() -> None:
        raise KeyError("x")

    with TouchFile(lock_path) as tf:
        with pytest.raises(KeyError):
            tf.with_lock(boom)
        assert probe(lock_path) and not tf.locked()


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_with_lock_never_runs_fn_without_lock(lock_path: str, holders: Holders) -> None:
    """If the lock is not had, fn is not called."""
    from helpers import hold

    hold(holders, lock_path)
    called = []
    with TouchFile(lock_path) as tf, pytest.raises(LockTimeout):
        tf.with_lock(lambda: called.append(1), timeout=0.05)
    assert called == []
    with TouchFile(lock_path) as tf, pytest.raises(TypeError, match="callable"):
        tf.with_lock(42)  # type: ignore[arg-type]


def test_errors_pickle_and_name_the_wait() -> None:
    """LockTimeout/LockCancelled/LockError survive pickling with path, kind and time."""
    timeout = LockTimeout("/tmp/a.lock", EXCLUSIVE, 1.5)
    assert str(timeout) == "timed out after 1.500 s waiting for exclusive lock on /tmp/a.lock"
    for error in (timeout, LockCancelled("/x", SHARED, 0.25), LockError("nope", "/y")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.path == error.path
    copy = pickle.loads(pickle.dumps(timeout))
    assert copy.kind is EXCLUSIVE and copy.waited == 1.5
    # The kind is pickled by its public name, which every version of touchfile
    # has, wherever the class lives: pickles cross versions.
    assert b"ctouchfile\nLockType" in pickle.dumps(timeout, protocol=0)
    assert "shared lock on /x" in str(LockCancelled("/x", SHARED, 0.25))
    assert "cancelled after 0.250 s" in str(LockCancelled("/x", SHARED, 0.25))


def test_acquire_after_close(lock_path: str) -> None:
    """A closed TouchFile refuses to lock; close() twice is fine."""
    tf = TouchFile(lock_path)
    tf.close()
    tf.close()
    with pytest.raises(LockError, match="closed"):
        tf.acquire()
    with pytest.raises(LockError, match="closed"):
        tf.with_lock(lambda: None)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_close_releases_other_threads_locks(lock_path: str) -> None:
    """close() releases a lock another thread holds; that thread's release() says so."""
    tf = TouchFile(lock_path)
    taken, closed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        tf.acquire()
        taken.set()
        closed.wait()
        try:
            tf.release()
        except LockError as error:
            errors.append(error)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait()
    tf.close()
    assert probe(lock_path)
    closed.set()
    thread.join()
    assert len(errors) == 1 and "close() released it" in str(errors[0])


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_context_constructors() -> None:
    """Context deadlines: with_timeout, with_deadline, parents; bad input rejected."""

    assert Context.with_cancel().deadline == math.inf
    before = time.monotonic()
    ctx = Context.with_timeout(10)
    assert before + 10 <= ctx.deadline <= time.monotonic() + 10
    assert 9 < ctx.remaining() <= 10
    assert Context.with_deadline(123.0).deadline == 123.0
    child = Context.with_timeout(100, parent=ctx)
    assert child.deadline == ctx.deadline  # the earliest wins
    assert Context.with_timeout(1, parent=ctx).deadline < ctx.deadline
    for bad in (-1, math.nan):
        with pytest.raises(ValueError):
            Context.with_timeout(bad)
    with pytest.raises(ValueError):
        Context.with_deadline(math.nan)
    for bad_type in ("1", True, None):
        with pytest.raises(TypeError):
            Context.with_deadline(bad_type)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parent"):
        Context.with_cancel(parent="x")  # type: ignore[arg-type]
    assert "remaining" in repr(ctx)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_context_cancel_propagates_down_only() -> None:
    """Cancelling a parent cancels children (even born later); not the reverse."""
    root = Context.with_cancel()
    child = Context.with_cancel(parent=root)
    grandchild = Context.with_timeout(5, parent=child)
    child.cancel()
    child.cancel()  # twice is fine
    assert child.cancelled and grandchild.cancelled and not root.cancelled
    other = Context.with_cancel(parent=root)
    root.cancel()
    assert other.cancelled
    assert Context.with_cancel(parent=root).cancelled
    assert "cancelled" in repr(root)


def test_import_is_lazy() -> None:
    """import touchfile loads nothing but its version until a name is used (the
    command relies on it); then each name is the one its module defines, and
    dir() and a bad name behave as for any module."""
    code = """
import sys, touchfile
assert sorted(m for m in sys.modules if m.startswith("touchfile")) == [
    "touchfile", "touchfile._version"], sys.modules
from touchfile._lock import TouchFile
assert touchfile.TouchFile is TouchFile and "TouchFile" in dir(touchfile)
assert "touchfile._fork" in sys.modules  # the child of a fork() is reset
from touchfile import *
assert LockTimeout.__module__ == "touchfile._errors"
try:
    touchfile.Nope
except AttributeError as error:
    assert str(error) == "module 'touchfile' has no attribute 'Nope'"
else:
    raise AssertionError("no AttributeError")
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd="/"
    )
    assert (proc.stdout, proc.stderr) == ("ok\n", "")


# ---- the decorator -------------------------------------------------------------------


def test_lock_decorates_a_function(lock_path: str, holders: Holders) -> None:
    """@tf.lock(...) runs each call under the lock, passes arguments and the
    result through, keeps the function's name and docstring, and releases;
    a call that cannot take the lock raises, and its body never runs."""
    tf = TouchFile(lock_path)
    ran: list[bool] = []

    @tf.lock(SHARED, timeout=0.2)
    def read(a: int, *, b: int) -> int:
        """Read it."""
        ran.append(not probe(lock_path) and probe(lock_path, "shared"))
        return a + b

    try:
        assert (read(1, b=2), read(3, b=4)) == (3, 7)
        assert ran == [True, True] and probe(lock_path)
        assert (read.__name__, read.__doc__) == ("read", "Read it.")
        hold(holders, lock_path)
        with pytest.raises(LockTimeout):
            read(0, b=0)
        assert len(ran) == 2
    finally:
        tf.close()


@pytest.mark.parametrize("guard", ["shared_lock", "exclusive_lock"])
def test_kind_guards_decorate_too(lock_path: str, guard: str) -> None:
    """@tf.shared_lock() and @tf.exclusive_lock() decorate as tf.lock() does."""
    with TouchFile(lock_path) as tf:
        decorate = tf.shared_lock if guard == "shared_lock" else tf.exclusive_lock

        @decorate(timeout=1)
        def kind_seen() -> tuple[bool, bool]:
            return probe(lock_path, "shared"), probe(lock_path)

        assert kind_seen() == ((True, False) if guard == "shared_lock" else (False, False))
        assert probe(lock_path)


def test_lock_decorates_an_async_function(lock_path: str) -> None:
    """@tf.lock() on an async def: each call awaits the lock (the async path, the
    loop never blocked) and runs the coroutine under it."""

    async def main() -> None:
        with TouchFile(lock_path) as tf:

            @tf.lock(timeout=5)
            async def work(x: int) -> int:
                await asyncio.sleep(0)
                assert tf.locked() and not probe(lock_path)
                return x * 2

            assert list(await asyncio.gather(work(1), work(2))) == [2, 4]
            assert probe(lock_path) and not tf.locked()

    asyncio.run(main())


def test_lock_refuses_what_it_cannot_hold_a_lock_around(lock_path: str) -> None:
    """@lock() on something not callable, or on a staticmethod or classmethod
    object (it goes below them): TypeError when decorating, saying so."""
    with TouchFile(lock_path) as tf:
        with pytest.raises(TypeError, match="decorates a function, not 42"):
            tf.lock()(42)  # type: ignore[type-var]
        for wrapper in (staticmethod, classmethod):
            with pytest.raises(TypeError, match=f"below @{wrapper.__name__}"):
                tf.lock()(wrapper(len))  # type: ignore[type-var, arg-type]


def test_with_lock_returns_a_future_as_it_is(lock_path: str) -> None:
    """A plain function that returns an awaitable whose work is done (a Future)
    is no async function: with_lock() returns it."""
    loop = asyncio.new_event_loop()
    try:
        with TouchFile(lock_path) as tf:
            future = tf.with_lock(loop.create_future)
            assert isinstance(future, asyncio.Future)
    finally:
        loop.close()


def test_lock_refuses_to_decorate_a_generator(lock_path: str) -> None:
    """A generator's body would run as it is iterated, after the lock was given
    back: decorating one is TypeError."""

    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    with TouchFile(lock_path) as tf:
        for fn in (gen, agen):
            with pytest.raises(TypeError, match="a generator"):
                tf.lock()(fn)


# ---- self-deadlock -------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("exclusive", "exclusive"),
                         ("exclusive", "shared"), ("shared", "exclusive")])  # fmt: skip
def test_self_deadlock_is_an_error(lock_path: str, first: str, second: str) -> None:
    """A thread that holds a lock on a file through one TouchFile and asks for a
    conflicting one through another, with no deadline and no context, would wait
    for ever, on itself: LockError at once, saying so (filelock#282). Its own lock
    is untouched. With a deadline, the wait ends at it (a test of exclusion)."""
    with TouchFile(lock_path) as a, TouchFile(lock_path) as b:
        a.acquire(first)
        t0 = time.monotonic()
        with pytest.raises(LockError, match=r"already holds a lock on .* through another"):
            b.acquire(second)
        assert time.monotonic() - t0 < 1
        assert a.locked() and not b.locked() and not probe(lock_path, second)
        with pytest.raises(LockTimeout):
            b.acquire(second, timeout=0.1)


def test_shared_after_shared_is_no_deadlock(lock_path: str) -> None:
    """Shared through one TouchFile, then shared through another: both held."""
    with TouchFile(lock_path) as a, TouchFile(lock_path) as b:
        a.acquire("shared")
        b.acquire("shared", timeout=0)
        assert a.locked() and b.locked()


def test_another_threads_hold_is_waited_for(lock_path: str) -> None:
    """Another thread's hold through another TouchFile is no self-deadlock: a wait
    with no deadline goes on until that thread releases."""
    with TouchFile(lock_path) as a, TouchFile(lock_path) as b:

        def hold_a_while() -> None:
            a.acquire()
            held.set()
            time.sleep(0.3)
            a.release()

        held = threading.Event()
        with ThreadPoolExecutor(1) as other:
            holding = other.submit(hold_a_while)
            held.wait()
            b.acquire()  # no deadline, no context: waits for the other thread
            holding.result()
        assert b.locked()


def test_self_deadlock_across_native_and_polling(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One TouchFile that polls and one that waits natively, on one file: still
    the same lock, and still a self-deadlock."""
    monkeypatch.setenv("TOUCHFILE_NATIVE", "0")
    with TouchFile(lock_path) as polling:
        monkeypatch.delenv("TOUCHFILE_NATIVE")
        with TouchFile(lock_path) as native:
            polling.acquire()
            with pytest.raises(LockError, match="already holds a lock"):
                native.acquire()


def test_self_deadlock_of_a_task(lock_path: str) -> None:
    """The same for an asyncio task: LockError, while another task just waits."""

    async def main() -> None:
        with TouchFile(lock_path) as a, TouchFile(lock_path) as b:
            await a.acquire_async()
            with pytest.raises(LockError, match="already holds a lock"):
                await b.acquire_async()
            a.release()

            async def hold_a_while() -> None:
                await a.acquire_async()
                held.set()
                await asyncio.sleep(0.3)
                a.release()

            held = asyncio.Event()
            holding = asyncio.ensure_future(hold_a_while())
            await held.wait()
            await b.acquire_async()  # another task's hold: waited for, no deadline
            await holding
            b.release()

    asyncio.run(main())


def test_fcntl_and_flock_on_one_file_are_no_deadlock(lock_path: str, holders: Holders) -> None:
    """A flock() lock and a method="fcntl" lock on one file do not exclude each
    other: holding one, the thread waits for the other (busy here, held by a
    lockf() user) without LockError, and is granted when it is let go."""
    holder = hold(holders, lock_path, tool="lockf")
    with TouchFile(lock_path) as a, TouchFile(lock_path, method="fcntl") as b:
        a.acquire()
        releaser = threading.Timer(0.3, holder.release)
        releaser.start()
        b.acquire()  # no deadline: a would-be self-deadlock is checked, and is not one
        releaser.join()
        assert a.locked() and b.locked()


# ---- pickling ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["flock", "fcntl"])
def test_pickle_copies_path_and_options(tmp_path: Path, method: str) -> None:
    """A TouchFile pickles as its path, mode and method: the copy holds nothing
    (even while the original holds), opens its own descriptors, and is excluded
    by the original's lock."""
    path = tmp_path / "p.lock"
    with TouchFile(path, mode=0o600, method=method) as tf:
        tf.acquire()
        with pickle.loads(pickle.dumps(tf)) as copy:
            assert isinstance(copy, TouchFile) and copy.path == tf.path
            assert not copy.locked()
            with ThreadPoolExecutor(1) as other:  # (this thread would wait on itself)
                error = other.submit(copy.acquire, timeout=0).exception()
            assert isinstance(error, LockTimeout)
            tf.release()
            copy.acquire(timeout=0)
            with pickle.loads(pickle.dumps(copy)) as again:
                assert again._method == method
    path.unlink()
    with pickle.loads(pickle.dumps(tf)):  # loaded where the file is gone: made anew
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 & ~_umask()


def test_subclasses_and_the_commands_locks_do_not_pickle(lock_path: str) -> None:
    """A subclass pickles only by a __reduce__ of its own (its state would be
    lost), and a lock on a descriptor or a byte range (the command's) not at all."""

    class Tagged(TouchFile):
        pass

    with Tagged(lock_path) as tagged, pytest.raises(TypeError, match="subclass"):
        pickle.dumps(tagged)
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        for tf in (TouchFile._for_command(None, fd, "flock", (0, 0)),
                   TouchFile._for_command(lock_path, None, "fcntl", (10, 5))):  # fmt: skip
            with tf, pytest.raises(TypeError, match="cannot be pickled"):
                pickle.dumps(tf)
    finally:
        os.close(fd)


def test_copy_of_a_temporary_never_removes_it() -> None:
    """The copy of TouchFile() opens its file by path; only the original's
    close() removes it."""
    tf = TouchFile()
    copy = pickle.loads(pickle.dumps(tf))
    copy.close()
    assert os.path.exists(tf.path)
    tf.close()
    assert not os.path.exists(tf.path)


def test_a_multiprocessing_worker_gets_a_working_copy(lock_path: str) -> None:
    """Passed to a worker process (spawn), a TouchFile just works there: the
    worker's copy is excluded while the parent holds the lock, then takes it."""
    proc = run_program("mp_worker", lock_path)
    assert (proc.stdout, proc.stderr) == ("held: False\nfree: True\n", "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- leaks ---------------------------------------------------------------------------


def test_an_unclosed_touchfile_warns_and_is_closed_when_collected(tmp_path: Path) -> None:
    """Dropped without close(), as an unclosed file is: ResourceWarning naming the
    path, its descriptors closed (a lock it held is given back), and a
    TouchFile()'s temporary file removed."""
    path = str(tmp_path / "leaked.lock")
    fds = len(os.listdir("/proc/self/fd"))
    tf = TouchFile(path)
    tf.acquire()
    temporary = TouchFile()
    temporary_path = temporary.path
    with pytest.warns(ResourceWarning, match=f"unclosed TouchFile {path!r}"):
        del tf
    assert probe(path)  # the lock went with its descriptor
    with pytest.warns(ResourceWarning, match="unclosed TouchFile"):
        del temporary
    assert not os.path.exists(temporary_path)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_closed_and_exiting_objects_do_not_warn(tmp_path: Path) -> None:
    """A closed TouchFile is collected in silence; one still alive when the
    interpreter exits is no leak (a module's lock, say): its temporary file is
    removed, without a warning even where ResourceWarning is an error. A forked
    child that exits leaves its parent's temporary file alone."""
    with TouchFile() as tf:
        pass
    del tf
    code = (
        "import os, sys, touchfile\n"
        "tf = touchfile.TouchFile()\n"
        "other = touchfile.TouchFile()\n"
        "print(tf.path, other.path, flush=True)\n"
        "if os.fork() == 0:\n"
        "    sys.exit(0)  # atexit runs in the child too\n"
        "os.wait()\n"
        "print(os.path.exists(tf.path))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    first, then = proc.stdout.splitlines()
    assert then == "True"  # the child's exit left it
    assert not any(os.path.exists(p) for p in first.split())  # the parent's removed both
