"""TouchFile(path, prefer_writers=True): a writer that has to wait holds new
readers back (the gate), existing readers finish, and the writer gets in.
Plain flock() users of the same file are still excluded, with no preference."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Holders, hold, probe, wait_until

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
from touchfile._flock import FlockPolling
from touchfile._native import Outcome

pytestmark = pytest.mark.usefixtures("mode")  # every wait here: native and polling


class Writer:
    """A thread asking for the exclusive lock of tf, and what came of it."""

    def __init__(self, tf: TouchFile, timeout: float | None = 10, ctx: Context | None = None):
        self.tf = tf
        self.error: BaseException | None = None
        self.granted = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.waited = 0.0
        self.thread = threading.Thread(target=self._run, args=(timeout, ctx))
        self.thread.start()

    def _run(self, timeout: float | None, ctx: Context | None) -> None:
        start = time.monotonic()
        try:
            self.tf.acquire(EXCLUSIVE, timeout, ctx=ctx)
        except BaseException as error:
            self.error = error
            self.waited = time.monotonic() - start
            self.done.set()
            return
        self.waited = time.monotonic() - start
        self.granted.set()
        self.release.wait(10)
        self.tf.release()
        self.done.set()

    def join(self) -> None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def files(lock_path: str) -> Iterator[list[TouchFile]]:
    """Four TouchFiles with prefer_writers=True on one lock file (each its own
    open file descriptions, so they exclude each other as processes do)."""
    made = [TouchFile(lock_path, prefer_writers=True) for _ in range(4)]
    yield made
    for tf in made:
        tf.close()


def gate_closed(tf: TouchFile) -> bool:
    """Would a new reader be held back now? (A try of the shared lock, with a
    fresh TouchFile, fails at once while a writer waits.)"""
    with TouchFile(tf.path, prefer_writers=True) as probe_tf:
        try:
            probe_tf.acquire(SHARED, timeout=0)
        except LockTimeout:
            return True
        probe_tf.release()
        return False


def test_a_waiting_writer_holds_new_readers_back(files: list[TouchFile]) -> None:
    """A reader holds; a writer waits; a new reader is refused while it waits
    (a plain TouchFile's reader is not: it asks for no preference); the first
    reader's release lets the writer in; the writer's, the new reader."""
    first, writer_tf, second, _ = files
    first.acquire(SHARED)
    writer = Writer(writer_tf)
    try:
        wait_until(lambda: gate_closed(second))
        with pytest.raises(LockTimeout):
            second.acquire(SHARED, timeout=0.1)
        with TouchFile(first.path) as plain:  # no preference: in beside the first
            plain.acquire(SHARED, timeout=0)
            plain.release()
        assert not writer.granted.is_set()
        first.release()
        assert writer.granted.wait(5)
        assert not probe(first.path, "shared")
        writer.release.set()
        second.acquire(SHARED, timeout=5)
        second.release()
    finally:
        writer.join()
    assert writer.error is None


def test_a_writer_gets_in_beside_a_stream_of_readers(files: list[TouchFile]) -> None:
    """Three readers take turns so that at every moment one holds the lock: a
    writer still gets in, as soon as the readers inside have left."""
    readers, writer_tf = files[:3], files[3]
    stop = threading.Event()
    holds = [0, 0, 0]

    def read(i: int) -> None:
        tf = readers[i]
        while not stop.is_set():
            try:
                tf.acquire(SHARED, timeout=0.05)
            except LockTimeout:
                continue  # behind the writer
            holds[i] += 1
            time.sleep(0.02)  # overlapping the others: the lock is never free
            tf.release()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.007)
    try:
        wait_until(lambda: min(holds) >= 3)
        writer_tf.acquire(EXCLUSIVE, timeout=2)  # LockTimeout if starved
        before = sum(holds)
        time.sleep(0.05)
        assert sum(holds) == before  # no reader in beside the writer
        writer_tf.release()
        wait_until(lambda: sum(holds) > before)  # and readers go on after it
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


@pytest.mark.parametrize("end", ["deadline", "cancel"])
def test_a_writer_that_gives_up_lets_readers_in(files: list[TouchFile], end: str) -> None:
    """A writer whose wait ends without the lock opens the gate again."""
    first, writer_tf, second, _ = files
    first.acquire(SHARED)
    ctx = Context.with_cancel()
    writer = Writer(writer_tf, timeout=0.3 if end == "deadline" else None, ctx=ctx)
    try:
        wait_until(lambda: gate_closed(second))
        if end == "cancel":
            ctx.cancel()
        assert writer.done.wait(5)
        assert isinstance(writer.error, LockTimeout if end == "deadline" else LockCancelled)
        second.acquire(SHARED, timeout=0)
        second.release()
    finally:
        writer.join()
        first.release()


@pytest.mark.parametrize("end", ["deadline", "cancel"])
def test_a_reader_behind_a_writer_ends_as_any_wait(files: list[TouchFile], end: str) -> None:
    """A reader waiting at the gate ends at its deadline, or when cancelled,
    promptly (in the kernel, the native interrupt ends it)."""
    first, writer_tf, second, _ = files
    first.acquire(SHARED)
    writer = Writer(writer_tf)
    try:
        wait_until(lambda: gate_closed(second))
        ctx = Context.with_cancel()
        if end == "cancel":
            threading.Timer(0.2, ctx.cancel).start()
        start = time.monotonic()
        with pytest.raises(LockTimeout if end == "deadline" else LockCancelled):
            second.acquire(SHARED, timeout=0.2 if end == "deadline" else None, ctx=ctx)
        assert 0.19 < time.monotonic() - start < 1.0
        assert not writer.granted.is_set()
    finally:
        first.release()
        writer.join()
    assert writer.error is None


@pytest.mark.parametrize("kind", [SHARED, EXCLUSIVE])
def test_an_exception_as_the_gate_is_granted_leaves_it_open(
    files: list[TouchFile], monkeypatch: pytest.MonkeyPatch, kind: LockType
) -> None:
    """An exception (Ctrl-C, say) that lands just after the kernel granted the
    gate, before anything else: the gate is given back with the handle, so
    the next readers and writers are not held back by a wait that is over."""
    first, tf, other, _ = files
    real = FlockPolling._gate

    def granted_then_interrupted(self: FlockPolling, *args: Any) -> Outcome:
        outcome = real(self, *args)
        assert outcome is Outcome.OK
        raise KeyboardInterrupt

    first.acquire(EXCLUSIVE if kind is SHARED else SHARED)  # so that tf has to wait
    monkeypatch.setattr(FlockPolling, "_gate", granted_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        tf.acquire(kind, timeout=5)
    monkeypatch.undo()
    first.release()
    assert not gate_closed(other)  # a writer's gate would hold readers back
    first.acquire(SHARED)
    writer = Writer(other)  # a reader's gate would hold this writer's wait back
    try:
        time.sleep(0.05)
        first.release()
        assert writer.granted.wait(1)
    finally:
        writer.join()
    tf.acquire(kind, timeout=0)  # the same handle, from the pool
    tf.release()


def test_plain_flock_users_are_still_excluded(files: list[TouchFile], holders: Holders) -> None:
    """Another process's plain flock() excludes prefer_writers locks both ways:
    it gets no preference, and gives none."""
    tf = files[0]
    path = tf.path
    holder = hold(holders, path)  # exclusive, with fcntl.flock()
    with pytest.raises(LockTimeout):
        tf.acquire(SHARED, timeout=0.1)
    with pytest.raises(LockTimeout):
        tf.acquire(EXCLUSIVE, timeout=0.1)
    holder.release()
    holder = hold(holders, path, "shared")
    tf.acquire(SHARED, timeout=0)
    tf.release()
    writer = Writer(files[1])  # waits behind the plain reader
    try:
        wait_until(lambda: gate_closed(files[2]))
        assert probe(path, "shared")  # a plain reader is not held back by the gate
        holder.release()
        assert writer.granted.wait(5)
        assert not probe(path, "shared") and not probe(path)
    finally:
        writer.join()
    tf.acquire(EXCLUSIVE, timeout=0)
    assert not probe(path, "shared")
    tf.release()


def test_a_reader_that_holds_and_asks_again_behind_a_writer(files: list[TouchFile]) -> None:
    """A thread holding a shared lock that asks for another one through another
    TouchFile, while a writer waits, would wait for ever on itself (the writer
    waits for it): LockError at once, as for any lock this thread holds."""
    first, writer_tf, second, _ = files
    first.acquire(SHARED)
    writer = Writer(writer_tf)
    try:
        wait_until(lambda: gate_closed(second))
        with pytest.raises(LockError, match="already holds a lock"):
            second.acquire(SHARED)
    finally:
        first.release()
        writer.join()


def test_arguments_and_pickling(lock_path: str) -> None:
    with pytest.raises(TypeError, match="prefer_writers must be True or False, not 'yes'"):
        TouchFile(lock_path, prefer_writers="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method='flock' only"):
        TouchFile(lock_path, method="fcntl", prefer_writers=True)
    with TouchFile(lock_path, prefer_writers=True) as tf, TouchFile(lock_path) as plain:
        copies = [pickle.loads(pickle.dumps(tf)), pickle.loads(pickle.dumps(plain))]
        plain.acquire(SHARED)
        writer = Writer(tf)
        try:
            wait_until(lambda: gate_closed(tf))
            with pytest.raises(LockTimeout):  # the copy has prefer_writers too
                copies[0].acquire(SHARED, timeout=0)
            copies[1].acquire(SHARED, timeout=0)  # and the plain one's has not
            copies[1].release()
        finally:
            plain.release()
            writer.join()
            for copy in copies:
                copy.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_a_writer_that_cannot_open_the_file_for_writing(tmp_path: Path, holders: Holders) -> None:
    """The gate needs the lock file open for writing: a writer that has to wait
    and cannot open it so gets a one-line PermissionError saying why."""
    path = tmp_path / "L"
    path.touch(0o444)
    hold(holders, path, "shared")
    code = (
        "import touchfile, sys\n"
        f"tf = touchfile.TouchFile({str(path)!r}, prefer_writers=True)\n"
        "tf.acquire('shared', timeout=0)\n"  # read-only is enough for readers
        "tf.release()\n"
        "try:\n"
        "    tf.acquire('exclusive', timeout=5)\n"
        "except PermissionError as e:\n"
        "    print(e)\n"
    )
    # root without CAP_DAC_OVERRIDE: bound by the file's mode like anyone
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-all", sys.executable, "-c", code],
        capture_output=True, text=True, cwd="/", timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "[Errno 13] with prefer_writers=True, an exclusive lock that has to wait needs the "
        f"lock file open for writing: Permission denied: '{path}'\n"
    )
