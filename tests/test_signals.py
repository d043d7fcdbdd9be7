"""The interrupt signal: thread-targeted, mask-proof, and polite to other handlers."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from helpers import Holders, hold, run_program

from touchfile import Context, LockCancelled, LockTimeout, TouchFile

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling


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


@pytest.mark.parametrize("when", ["before", "after", "restart", "ignored"])
def test_foreign_handler_falls_back_to_polling(
    lock_path: str, holders: Holders, when: str, mode: str
) -> None:
    """A foreign handler on the interrupt signal (installed before or after
    touchfile's, or touchfile's own given SA_RESTART) is detected: a warning
    says so, and waits poll (still ending at their deadline) rather than hang.
    The application's SIG_IGN is its choice too, and stays: replacing it would
    let any process of the user interrupt system calls in every thread. The
    warning names the caller's line, so that filters by module work."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path)
    proc = run_program("foreign", lock_path, when)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if when == "after":
        assert lines.pop(0) == "native-before True"
    assert lines[0].startswith("timeout 0.1")
    assert lines[1] == "native False"
    assert "has a handler that is not touch" in lines[2]
    assert lines[3] == f"ignored {when == 'ignored'}"
    assert lines[4] == "warned at ['foreign.py']"  # the caller's acquire(), for filters


@pytest.mark.parametrize("end", ["deadline", "cancel"])
def test_a_signal_landing_before_the_blocking_call_still_ends_the_wait(
    lock_path: str, holders: Holders, mode: str, end: str
) -> None:
    """The deadline's (or a cancel's) signal lands before flock() starts: the
    core sleeps 20 ms between arming the wait and the call (a knob for this
    test), so the handler runs in user space, and the call would block on.
    The re-send (the timer's interval, or the scheduler's) ends it soon after."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    from touchfile import _native

    hold(holders, lock_path)
    tf = TouchFile(lock_path)
    ctx = Context.with_cancel()
    took: list[float] = []
    errors: list[BaseException] = []

    def wait() -> None:
        start = time.monotonic()
        try:
            tf.acquire(timeout=0.002) if end == "deadline" else tf.acquire(ctx=ctx)
        except BaseException as e:
            errors.append(e)
        took.append(time.monotonic() - start)

    _native._lib.tf_set_test_delay(20_000_000)
    try:
        thread = threading.Thread(target=wait)
        thread.start()
        if end == "cancel":
            time.sleep(0.005)  # inside the 20 ms, before flock()
            ctx.cancel()
        thread.join(5)
        hung = thread.is_alive()
    finally:
        _native._lib.tf_set_test_delay(0)
        tf.close()  # ends a wait that hung
        thread.join(5)
    assert not hung, "the signal was lost: the wait did not end"
    assert [type(e) for e in errors] == [LockTimeout if end == "deadline" else LockCancelled]
    assert 0.020 <= took[0] < 0.5


def test_interrupt_signal_can_be_chosen(lock_path: str, holders: Holders, mode: str) -> None:
    """TOUCHFILE_SIGNAL picks another signal; SIGURG is then left alone."""
    if mode != "native":
        pytest.skip("concerns the native interrupt only")
    hold(holders, lock_path)
    proc = run_program("other_signal", lock_path, env={"TOUCHFILE_SIGNAL": "SIGRTMIN+4"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "timeout 0.1",
        "native True",
        "urg untouched True",
        "rt ours True",
    ]


@pytest.mark.parametrize("value", ["SIGKILL", "SIGINT", "9", "SIGNOPE", "SIGRTMIN+x", "SIGRTMAX+1"])
def test_bad_interrupt_signal(value: str, lock_path: str) -> None:
    """A TOUCHFILE_SIGNAL that is not a free signal is a clear ValueError at first
    use (the first TouchFile), not at import."""
    proc = run_program("bad_signal", lock_path, env={"TOUCHFILE_SIGNAL": value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"TOUCHFILE_SIGNAL={value!r}")


@pytest.mark.parametrize("value", ["SIGUSR2", "usr1", "RTMIN+2", "SIGRTMAX-1"])
def test_good_interrupt_signal_names(value: str) -> None:
    """Signal names with or without SIG, and RTMIN/RTMAX offsets, are accepted."""
    from touchfile._native import parse_signal

    assert parse_signal(value) > 0
