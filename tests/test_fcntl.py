"""TouchFile(path, method="fcntl"): open file description record locks
(F_OFD_SETLK), with the API, deadlines and native interrupt of flock() locks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import Holders, hold, probe, program

from touchfile import Context, LockCancelled, LockTimeout, TouchFile


def record_probe(tool: str, path: str, kind: str = "exclusive") -> str:
    """ "free" or "busy": what a fcntl record-lock user in another process sees."""
    proc = subprocess.run(
        [sys.executable, program("record_probe"), tool, path, kind],
        capture_output=True, text=True, timeout=30, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def ofd_locks(path: str) -> list[str]:
    """The OFD lock lines of /proc/locks on path's file: ["WRITE 0 EOF", ...]."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        rows = [line.split() for line in f]
    return [" ".join((r[3], r[6], r[7])) for r in rows if r[1] == "OFDLCK" and r[5] == key]


@pytest.mark.parametrize("tool", ["lockf", "fasteners"])
@pytest.mark.parametrize("kind", ["exclusive", "shared"])
def test_excludes_record_lock_users(lock_path: str, tool: str, kind: str) -> None:
    """A fcntl lock excludes fcntl.lockf() and fasteners users in other processes
    (a shared one only their exclusive locks), and nothing once released."""
    with TouchFile(lock_path, method="fcntl") as tf:
        tf.acquire(kind)
        assert record_probe(tool, lock_path, "exclusive") == "busy"
        assert record_probe(tool, lock_path, "shared") == (
            "busy" if kind == "exclusive" else "free"
        )
        tf.release()
        assert record_probe(tool, lock_path, "exclusive") == "free"


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize("tool", ["lockf", "fasteners"])
def test_waits_for_record_lock_users(lock_path: str, holders: Holders, tool: str) -> None:
    """A fcntl lock waits for a lockf() or fasteners holder in another process,
    and is granted when it lets go; a shared one is granted beside a shared one."""
    Path(lock_path).touch()
    with TouchFile(lock_path, method="fcntl") as tf:
        holder = hold(holders, lock_path, "shared", tool=tool)
        tf.acquire("shared", timeout=0)
        tf.release()
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=0.2)
        releaser = threading.Timer(0.2, holder.release)
        releaser.start()
        t0 = time.monotonic()
        tf.acquire(timeout=10)
        assert 0.1 < time.monotonic() - t0 < 5
        tf.release()
        releaser.join()  # the holder said when it let go: it may be stopped now


def test_flock_and_fcntl_locks_do_not_exclude_each_other(lock_path: str) -> None:
    """On a local file system, flock() and fcntl() locks are independent: an
    exclusive lock of each kind is held on one file at once (as the README says)."""
    with TouchFile(lock_path) as by_flock, TouchFile(lock_path, method="fcntl") as by_fcntl:
        by_flock.acquire(timeout=0)
        by_fcntl.acquire(timeout=0)
        assert not probe(lock_path)  # the flock() lock is held
        assert ofd_locks(lock_path) == ["WRITE 0 EOF"]


def test_handles_in_one_process_exclude_each_other(lock_path: str) -> None:
    """As with flock(): two TouchFiles (or two threads of one) in one process
    exclude each other, since each lock is an open file description's."""
    a = TouchFile(lock_path, method="fcntl")
    b = TouchFile(lock_path, method="fcntl")
    try:
        a.acquire()
        with pytest.raises(LockTimeout):
            b.acquire(timeout=0)
        with ThreadPoolExecutor(1) as other_thread:
            error = other_thread.submit(a.acquire, timeout=0).exception()
        assert isinstance(error, LockTimeout)
        a.release()
        b.acquire(timeout=0)
        b.release()
        a.acquire("shared")
        b.acquire("shared", timeout=0)  # shared beside shared
        assert ofd_locks(lock_path) == ["READ 0 EOF", "READ 0 EOF"]
    finally:
        a.close()
        b.close()
    assert ofd_locks(lock_path) == []


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_deadline_and_cancel_end_a_wait(lock_path: str, holders: Holders) -> None:
    """A wait for a fcntl lock ends at its deadline, and at once on cancel."""
    hold(holders, lock_path, tool="lockf")
    with TouchFile(lock_path, method="fcntl") as tf:
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=0.3)
        assert 0.3 <= time.monotonic() - t0 < 2
        ctx = Context.with_cancel()
        threading.Timer(0.2, ctx.cancel).start()
        t0 = time.monotonic()
        with pytest.raises(LockCancelled):
            tf.acquire(ctx=ctx)
        assert 0.2 <= time.monotonic() - t0 < 2


def test_native_wait_blocks_in_the_kernel(lock_path: str, holders: Holders, mode: str) -> None:
    """The native fcntl wait is one F_OFD_SETLKW, not a poll: the waiting thread
    sleeps in the kernel rather than waking up every few milliseconds."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path, tool="lockf")
    with TouchFile(lock_path, method="fcntl") as tf:
        assert tf.native
        started = threading.Event()
        tid: list[int] = []

        def wait() -> None:
            tid.append(threading.get_native_id())
            started.set()
            with pytest.raises(LockTimeout):
                tf.acquire(timeout=1.0)

        thread = threading.Thread(target=wait)
        thread.start()
        started.wait()
        time.sleep(0.3)
        stat = Path(f"/proc/self/task/{tid[0]}/stat").read_text()
        switches_before = Path(f"/proc/self/task/{tid[0]}/status").read_text()
        time.sleep(0.3)
        switches_after = Path(f"/proc/self/task/{tid[0]}/status").read_text()
        thread.join()
    assert stat.split(") ")[1].split()[0] == "S"  # sleeping
    voluntary = [
        int(line.split()[1])
        for text in (switches_before, switches_after)
        for line in text.splitlines()
        if line.startswith("voluntary_ctxt_switches")
    ]
    assert voluntary[1] - voluntary[0] <= 2  # a poll every 1-10 ms would be 30 or more


def test_asyncio(lock_path: str, holders: Holders) -> None:
    """acquire_async with method="fcntl": waits in a thread, task.cancel() ends it."""
    holder = hold(holders, lock_path, tool="lockf")

    async def main() -> None:
        with TouchFile(lock_path, method="fcntl") as tf:
            task = asyncio.ensure_future(tf.acquire_async())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            holder.release()
            async with tf.lock_async(timeout=5):
                assert record_probe("lockf", lock_path) == "busy"

    asyncio.run(main())


def test_holders(lock_path: str) -> None:
    """holders() lists the processes holding a fcntl lock on the file (not flock()'s)."""
    with TouchFile(lock_path, method="fcntl") as tf, TouchFile(lock_path) as by_flock:
        assert tf.holders() == []
        tf.acquire("shared")
        [me] = tf.holders()
        assert (me.pid, me.kind.value) == (os.getpid(), "shared")
        assert by_flock.holders() == []  # flock()'s holders: none


def test_exclusive_needs_write_access(tmp_path: Path) -> None:
    """An exclusive fcntl lock needs the file open for writing: on a directory, a
    one-line OSError says so; a shared lock on it is fine."""
    with TouchFile(tmp_path, method="fcntl") as tf:
        tf.acquire("shared")
        tf.release()
        with pytest.raises(OSError, match="method='fcntl' needs the file open for writing"):
            tf.acquire()


def test_read_only_file_opened_for_writing_when_needed(lock_path: str) -> None:
    """The lock file is opened read-only, as for flock(), and read-write for the
    first exclusive lock; shared locks never need write access."""
    Path(lock_path).write_text("")
    with TouchFile(lock_path, method="fcntl") as tf:
        tf.acquire("shared")
        opened = _fdinfo_flags(lock_path)
        assert len(opened) == 1 and opened[0] & os.O_ACCMODE == os.O_RDONLY
        tf.release()
        tf.acquire()
        opened = _fdinfo_flags(lock_path)
        assert len(opened) == 1 and opened[0] & os.O_ACCMODE == os.O_RDWR


def _fdinfo_flags(path: str) -> list[int]:
    """The open flags of this process's descriptors of path."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != path:
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        found.append(int(info.split("flags:")[1].split()[0], 8))
    return found


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("lockf", ValueError),
        ("FLOCK", ValueError),
        ("", ValueError),
        (1, TypeError),
        (None, TypeError),
    ],
)
def test_bad_method(lock_path: str, method: object, error: type[Exception]) -> None:
    """method must be "flock" or "fcntl": ValueError for another name, TypeError
    for a non-string, each with a one-line message naming both."""
    with pytest.raises(error, match="'flock' or 'fcntl'"):
        TouchFile(lock_path, method=method)  # type: ignore[arg-type]
    assert not os.path.exists(lock_path)  # refused before anything was created
