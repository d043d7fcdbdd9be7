"""The "touchfile" logger: each wait (how long, who held the lock, how it
ended) and each release (how long the lock was held) at DEBUG; nothing is
recorded, and nothing costs, below DEBUG."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading

import pytest
from helpers import Holder

from touchfile import SHARED, LockTimeout, TouchFile

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling


@pytest.fixture
def debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="touchfile")
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "touchfile"]


def test_a_wait_is_logged_with_its_length_its_holder_and_its_end(
    lock_path: str, holders: list[Holder], debug: pytest.LogCaptureFixture
) -> None:
    """A wait that times out, then one that is granted when the holder lets go:
    each one DEBUG record naming the holder's pid and command."""
    holder = Holder(lock_path)
    holders.append(holder)
    pid = holder.proc.pid
    with TouchFile(lock_path) as tf:
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=0.1)
        releaser = threading.Timer(0.2, holder.release)
        releaser.start()
        tf.acquire(SHARED, timeout=5)
        tf.release()
        releaser.join()
    found = messages(debug)
    assert len(found) == 3, found
    held_by = rf"held by pid {pid} \(exclusive, [^)]*holder_fcntl[^)]*\)"
    assert re.fullmatch(
        rf"waited 0\.1\d\d s for exclusive lock on {re.escape(lock_path)} \({held_by}\): timed out",
        found[0],
    ), found[0]
    assert re.fullmatch(
        rf"waited 0\.[2-4]\d\d s for shared lock on {re.escape(lock_path)} \({held_by}\): granted",
        found[1],
    ), found[1]
    assert re.fullmatch(rf"released lock on {re.escape(lock_path)}, held 0\.0\d\d s", found[2])
    assert all(r.levelno == logging.DEBUG for r in debug.records)


def test_each_release_is_logged_with_how_long_the_lock_was_held(
    lock_path: str, debug: pytest.LogCaptureFixture
) -> None:
    """A lock taken at once is not a wait (no record), and its release says how
    long it was held, through every way of releasing."""
    with TouchFile(lock_path) as tf:
        with tf.lock():
            threading.Event().wait(0.05)
        tf.with_lock(lambda: None, SHARED)
        tf.acquire(timeout=1)
        tf.release()
    found = messages(debug)
    assert len(found) == 3, found
    assert re.fullmatch(rf"released lock on {re.escape(lock_path)}, held 0\.0[5-9]\d s", found[0])
    assert all(m.startswith(f"released lock on {lock_path}, held 0.0") for m in found)


def test_nothing_is_recorded_below_debug(lock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    """With the logger at INFO, no record, and holds carry no timestamp; set to
    DEBUG, the next release is recorded."""
    caplog.set_level(logging.INFO, logger="touchfile")
    other = TouchFile(lock_path)
    other.acquire()
    with TouchFile(lock_path) as tf:
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=0.05)
        other.release()
        tf.acquire()
        assert tf._locks.held[threading.get_ident()].since == 0.0
        tf.release()
        assert messages(caplog) == []
        caplog.set_level(logging.DEBUG, logger="touchfile")  # a change of level is seen at once
        tf.acquire()
        tf.release()
    other.close()
    assert len(messages(caplog)) == 1 and messages(caplog)[0].startswith("released lock on")


def python(code: str) -> subprocess.CompletedProcess[str]:
    """code run by a new interpreter, outside the source tree."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/"
    )


def test_the_logger_has_a_null_handler_and_stays_silent_unconfigured(lock_path: str) -> None:
    """An application that imports logging but configures nothing: the logger
    has its NullHandler, so nothing reaches stderr (logging's last resort),
    even a warning."""
    proc = python(
        "import logging, touchfile\n"
        f"tf = touchfile.TouchFile({lock_path!r})\n"
        "log = logging.getLogger('touchfile')\n"
        "print([type(h).__name__ for h in log.handlers])\n"
        "log.warning('this goes nowhere')\n"
        "tf.close()\n"
    )
    assert (proc.stdout, proc.stderr) == ("['NullHandler']\n", "")


def test_the_command_does_not_import_logging(lock_path: str) -> None:
    """logging costs milliseconds at start-up: the command never imports it."""
    proc = python(
        "import sys\n"
        "from touchfile._cli import main\n"
        f"status = main([{lock_path!r}, 'true'])\n"
        "print(status, 'logging' in sys.modules)\n"
    )
    assert (proc.stdout, proc.stderr) == ("0 False\n", "")
