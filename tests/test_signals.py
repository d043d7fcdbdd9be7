"""The interrupt signal: thread-targeted, mask-proof, and polite to other handlers."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from helpers import Holders, hold, run_python

from touchfile import Context, LockCancelled, LockTimeout, TouchFile


def test_only_the_waiting_thread_is_signalled(lock_path: str, holders: Holders, mode: str) -> None:
    """Deadlines and cancels signal the waiting thread only: a bystander thread
    that blocks the signal never finds it pending (nothing process-wide)."""
    hold(holders, lock_path)
    tf = TouchFile(lock_path)
    ready, stop = threading.Event(), threading.Event()
    pending: list[set[signal.Signals]] = []

    def bystander() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
        ready.set()
        stop.wait(30)
        pending.append(signal.sigpending())

    thread = threading.Thread(target=bystander)
    thread.start()
    ready.wait(5)
    for i in range(50):
        ctx = Context.with_cancel()
        timer = threading.Timer(0.001, ctx.cancel)
        timer.start()
        with pytest.raises((LockCancelled, LockTimeout)):
            tf.acquire(ctx=ctx, timeout=0.002 if i % 2 else None)
        timer.join()
    stop.set()
    thread.join(5)
    assert signal.SIGURG not in pending[0]
    tf.close()


def test_wait_works_with_signal_blocked(lock_path: str, holders: Holders) -> None:
    """A thread that inherited a mask blocking the interrupt signal still has its
    wait ended at the deadline; its mask is restored and nothing is left pending."""
    hold(holders, lock_path)
    tf = TouchFile(lock_path)
    out: list[object] = []

    def worker() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
        start = time.monotonic()
        try:
            tf.acquire(timeout=0.05)
        except LockTimeout:
            out.append(time.monotonic() - start)
        out.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))
        out.append(signal.sigpending())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    elapsed, mask, pending = out
    assert isinstance(elapsed, float) and 0.05 <= elapsed < 1
    assert signal.SIGURG in mask  # type: ignore[operator]
    assert signal.SIGURG not in pending  # type: ignore[operator]
    tf.close()


_FOREIGN = r"""
import signal, sys, time, warnings
from touchfile import TouchFile, LockTimeout
warnings.simplefilter("always")
when = sys.argv[2]
def foreign(signum, frame):
    pass
if when == "before":
    signal.signal(signal.SIGURG, foreign)
if when == "ignored":
    signal.signal(signal.SIGURG, signal.SIG_IGN)
tf = TouchFile(sys.argv[1])
if when == "after":
    try:
        tf.acquire(timeout=0.01)
    except LockTimeout:
        pass
    print("native-before", tf.native)
    signal.signal(signal.SIGURG, foreign)
if when == "restart":
    import ctypes
    class Sigaction(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                    ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        tf.acquire(timeout=0.01)
    except LockTimeout:
        pass
    act = Sigaction()
    assert libc.sigaction(signal.SIGURG, None, ctypes.byref(act)) == 0
    act.flags |= 0x10000000  # SA_RESTART, on our own handler
    assert libc.sigaction(signal.SIGURG, ctypes.byref(act), None) == 0
with warnings.catch_warnings(record=True) as caught:
    start = time.monotonic()
    try:
        tf.acquire(timeout=0.1)
    except LockTimeout:
        print("timeout", round(time.monotonic() - start, 2))
print("native", tf.native)
print("warned", [str(w.message)[:80] for w in caught])
print("ignored", signal.getsignal(signal.SIGURG) == signal.SIG_IGN)
"""


@pytest.mark.parametrize("when", ["before", "after", "restart", "ignored"])
def test_foreign_handler_falls_back_to_polling(
    lock_path: str, holders: Holders, when: str, mode: str
) -> None:
    """A foreign handler on the interrupt signal (installed before or after
    touchfile's, or touchfile's own given SA_RESTART) is detected: a warning
    says so, and waits poll (still ending at their deadline) rather than hang.
    The application's SIG_IGN is its choice too, and stays: replacing it would
    let any process of the user interrupt system calls in every thread."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path)
    proc = run_python(_FOREIGN, lock_path, when)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if when == "after":
        assert lines.pop(0) == "native-before True"
    assert lines[0].startswith("timeout 0.1")
    assert lines[1] == "native False"
    assert "has a handler that is not touch" in lines[2]
    assert lines[3] == f"ignored {when == 'ignored'}"


_OTHER_SIGNAL = r"""
import signal, sys, time, ctypes
from touchfile import TouchFile, LockTimeout
class Sigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]
libc = ctypes.CDLL(None)
def handler_of(sig):
    act = Sigaction()
    libc.sigaction(sig, None, ctypes.byref(act))
    return act.handler
tf = TouchFile(sys.argv[1])
start = time.monotonic()
try:
    tf.acquire(timeout=0.05)
except LockTimeout:
    print("timeout", round(time.monotonic() - start, 1))
print("native", tf.native)
print("urg untouched", handler_of(signal.SIGURG) is None)
print("rt ours", handler_of(signal.SIGRTMIN + 4) is not None)
"""


def test_interrupt_signal_can_be_chosen(lock_path: str, holders: Holders, mode: str) -> None:
    """TOUCHFILE_SIGNAL picks another signal; SIGURG is then left alone."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path)
    proc = run_python(_OTHER_SIGNAL, lock_path, env={"TOUCHFILE_SIGNAL": "SIGRTMIN+4"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "timeout 0.1",
        "native True",
        "urg untouched True",
        "rt ours True",
    ]


_BAD_SIGNAL = r"""
import sys
import touchfile
try:
    touchfile.TouchFile(sys.argv[1])
except ValueError as error:
    print(error)
"""


@pytest.mark.parametrize("value", ["SIGKILL", "SIGINT", "9", "SIGNOPE", "SIGRTMIN+x", "SIGRTMAX+1"])
def test_bad_interrupt_signal(value: str, lock_path: str) -> None:
    """A TOUCHFILE_SIGNAL that is not a free signal is a clear ValueError at first
    use (the first TouchFile), not at import."""
    proc = run_python(_BAD_SIGNAL, lock_path, env={"TOUCHFILE_SIGNAL": value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"TOUCHFILE_SIGNAL={value!r}")


@pytest.mark.parametrize("value", ["SIGUSR2", "usr1", "RTMIN+2", "SIGRTMAX-1"])
def test_good_interrupt_signal_names(value: str) -> None:
    """Signal names with or without SIG, and RTMIN/RTMAX offsets, are accepted."""
    from touchfile._native import parse_signal

    assert parse_signal(value) > 0
