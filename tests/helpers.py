"""Helpers for the tests: lock holders in other processes, a kernel probe."""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The touchfile command, installed beside this interpreter.
TOUCHFILE = str(Path(sys.executable).with_name("touchfile"))

# The child programs the tests run (files, so that ruff and mypy check them).
# Children run in "/" so that they import the installed touchfile, never the
# source tree.
PROGRAMS = Path(__file__).with_name("programs")


def program(name: str) -> str:
    """The path of tests/programs/NAME.py."""
    path = PROGRAMS / f"{name}.py"
    assert path.is_file(), path
    return str(path)


class Holder:
    """A process holding a lock on path until release() (always reaped by stop())."""

    def __init__(self, path: str | Path, kind: str = "exclusive", tool: str = "fcntl") -> None:
        # tool: "fcntl" (fcntl.flock()), "lockf" and "fasteners" (fcntl record
        # locks), "filelock", "touchfile", or a command: "flock", "cli".
        if tool in ("flock", "cli"):  # util-linux flock(1), or touchfile's command
            flag = "-x" if kind == "exclusive" else "-s"
            tool_path = "flock" if tool == "flock" else TOUCHFILE
            argv = [tool_path, flag, str(path), "sh", "-c", "echo locked; read x"]
        elif tool == "lockf":
            argv = [sys.executable, program("holder_fcntl"), str(path), kind, "lockf"]
        else:
            argv = [sys.executable, program(f"holder_{tool}"), str(path), kind]
        self.tool = tool
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd="/"
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.stop()
            raise RuntimeError(f"holder {tool} failed to lock {path}: {line!r}")

    def release(self) -> float:
        """Release now; returns the holder's time.monotonic() at release."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        if self.tool in ("flock", "cli"):  # these release when their command exits
            self.proc.wait(timeout=10)
            return time.monotonic()
        return float(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


Holders = list[Holder]


def hold(
    holders: Holders, path: str | Path, kind: str = "exclusive", tool: str = "fcntl"
) -> Holder:
    holder = Holder(path, kind, tool)
    holders.append(holder)
    return holder


def probe(path: str | Path, kind: str = "exclusive") -> bool:
    """Could a newcomer take this lock right now? Asks the kernel through a
    fresh open file description (which conflicts with every other one, even
    in this process)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if kind == "exclusive" else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextmanager
def no_collector_pauses() -> Iterator[None]:
    """For a test that measures lateness in milliseconds: collect now, then
    keep every object that exists from the garbage collector's later passes
    (gc.freeze()), so that none of them is a full collection of the test
    process's whole heap."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def wait_until(condition: object, timeout: float = 5.0) -> None:
    """Poll a callable until it is true (test set-up only, never a measurement)."""
    assert callable(condition)
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


def run_program(
    name: str,
    *args: str,
    timeout: float = 30,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run tests/programs/NAME.py in a fresh interpreter (always reaped: run()
    waits or kills)."""
    return subprocess.run(
        [sys.executable, program(name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd="/",  # not the source tree: children import the installed package
    )
