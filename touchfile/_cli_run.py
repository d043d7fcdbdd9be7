"""The touchfile command, once _cli.py has parsed its arguments and tried
the lock, when that try did not take it (or there was nothing to try): this
module takes it through its states, opening the lock, waiting, granted, and
then running (_cli_exec.py: supervised until it exits, or exec'd in place
with -F), and gives its exit status.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _cli_exec, _cli_report
from ._cli import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_PROTOCOL,
    EX_UNAVAILABLE,
    EX_USAGE,
    LOCK_ERRORS,
    URL_SCHEMES,
    _Exit,
    _Stopped,
    open_error,
)
from ._cli_args import Args
from ._cli_exec import WATCHED, exit_status, start_command, supervise
from ._cli_report import HOLDERS_EVERY, Status, holders_or_none, print_holders, say
from ._context import Context
from ._errors import LockError, LockTimeout
from ._holders import holders
from ._kinds import LockType
from ._lock import LockBase, TouchFile

if TYPE_CHECKING:
    from ._cli_report import Holder
    from .postgres import PostgresLock


def run(args: Args, held: int | None) -> int:
    """The command line, parsed and its lock tried once by _cli.main(): held is
    the lock file's descriptor, for the lock to adopt (None if there is none).
    Returns the exit status, or raises _cli's _Exit or _Stopped."""
    # A stop signal that came before this had its default action: touchfile
    # died of it, with nothing run, as it would die of it now.
    ignored = _cli_exec.catch_stop_signals()
    if args.holders:
        lock_class = "OFDLCK" if args.method == "fcntl" else "FLOCK"
        return _show_holders(str(args.lockfile), lock_class)
    return _run(args, ignored, held)


def _show_holders(path: str, lock_class: str) -> int:
    if path.startswith(URL_SCHEMES):
        lk = _open_postgres(path)
        try:
            found: list[Holder] = list(lk.holders())
        except (OSError, LockError) as error:
            raise _Exit(EX_UNAVAILABLE, str(error)) from None
        finally:
            lk.close()
        print_holders(lk.url, found)
        return 0
    try:
        found = list(holders(path, lock_class))
    except NotImplementedError as error:
        raise _Exit(EX_UNAVAILABLE, str(error)) from None
    except OSError as error:
        raise _Exit(EX_NOINPUT, f"cannot read lock file {path}: {error.strerror}") from None
    print_holders(path, found)
    return 0


def _run(args: Args, ignored: set[int], held: int | None) -> int:
    """Open, wait, run: the command's exit status."""
    tf = _open(args, held)
    remote = tf._locks.backend.remote
    watched = set(WATCHED)
    lost: _Lost | None = None
    if remote:
        watched.add(signal.SIGALRM)  # from _Lost: the lock was lost
    try:
        pid = _wait_then_spawn(tf, args, watched, ignored)
        if pid is None:  # FD alone: locked (or unlocked), and that is all
            return 0
        if remote:
            lost = _Lost(tf)
    except BaseException:
        if args.fd is None:  # never the lock of a descriptor given: it is the caller's
            tf.close()
        raise
    name = tf._locks.backend.name
    wait_status = supervise(pid, watched, ignored, lost, args.keep_running, name)
    was_lost = lost is not None and lost.fired  # before close() ends the hold too
    if (args.close or remote) and args.fd is None:
        tf.close()
    # Otherwise touchfile exits without unlocking, as flock(1) does: the
    # command shares the locked description, and whatever it left running
    # with the descriptor (a daemon, say) still holds the lock.
    return EX_PROTOCOL if was_lost else exit_status(wait_status)


class _Lost:
    """Tells the main thread (SIGALRM, which it takes with sigwaitinfo())
    when the held lock's context ends: while the command runs, only a loss
    ends it."""

    def __init__(self, lk: LockBase) -> None:
        self.fired = False
        self.main = threading.get_ident()
        if not lk.held_context()._attach(self):
            self.cancel(None)  # lost already

    def cancel(self, reason: object) -> None:  # from the watcher's thread
        self.fired = True
        signal.pthread_kill(self.main, signal.SIGALRM)


def _open(args: Args, held: int | None) -> LockBase:
    if args.fd is not None:
        try:
            return TouchFile._for_command(None, args.fd, args.method, args.span)
        except OSError as error:  # EBADF: the descriptor is not open
            raise _lock_error(error, str(args.fd)) from None
        except (ValueError, RuntimeError) as error:  # TOUCHFILE_NATIVE / TOUCHFILE_SIGNAL
            raise _Exit(EX_CONFIG, str(error)) from None
    lockfile = str(args.lockfile)
    if lockfile.startswith(URL_SCHEMES):
        for given, option in ((args.no_fork, "-F"), (args.method != "flock", "--fcntl"),
                              (args.kind is None, "-u")):  # fmt: skip
            if given:
                raise _Exit(
                    EX_USAGE,
                    f"{option} does not apply to a PostgreSQL lock, which touchfile's own "
                    f"session holds (see {_cli_report.program} --help)",
                )
        return _open_postgres(lockfile)
    try:
        # 0666 less the umask, as flock(1).
        return TouchFile._for_command(lockfile, None, args.method, args.span, held)
    except OSError as error:
        raise open_error(lockfile, error) from None
    except (ValueError, RuntimeError) as error:  # TOUCHFILE_NATIVE / TOUCHFILE_SIGNAL
        raise _Exit(EX_CONFIG, str(error)) from None


def _lock_error(error: OSError, name: str) -> _Exit:
    """The lock cannot be taken, said as flock(1) says it ("NAME: reason"):
    EX_DATAERR, or EX_OSERR when out of locks or memory; a lock file that
    cannot be reopened read-write (--fcntl -x) is one that cannot be opened."""
    status = LOCK_ERRORS.get(error.errno or 0, EX_DATAERR)
    reason = os.strerror(error.errno) if error.errno else error.strerror  # the bare reason
    if status in (EX_NOINPUT, EX_CANTCREAT):
        return _Exit(status, f"cannot open lock file {name}: {reason}")
    return _Exit(status, f"{name}: {reason}")


def _open_postgres(url: str) -> PostgresLock:
    """The lock URL#NAME names, its first connection made."""
    dsn, _, name = url.partition("#")
    try:
        from .postgres import PostgresLock  # says what to install, if psycopg is missing
    except ImportError as error:
        raise _Exit(EX_UNAVAILABLE, str(error)) from None
    from urllib.parse import unquote  # here: the file path's start-up need not pay for it

    from ._postgres import redacted_url

    if not name:
        shown = redacted_url(url)
        raise _Exit(
            EX_USAGE, f"no lock name in {shown}: add #NAME (postgresql://user@host/db#NAME)"
        )
    try:
        return PostgresLock(unquote(name), dsn)
    except PermissionError as error:
        raise _Exit(EX_NOPERM, str(error)) from None
    except (OSError, LockError) as error:
        raise _Exit(EX_UNAVAILABLE, str(error)) from None
    except ValueError as error:
        raise _Exit(EX_USAGE, str(error)) from None


def _wait_then_spawn(
    tf: LockBase, args: Args, watched: Iterable[int], ignored: set[int]
) -> int | None:
    """Waiting, then granted: the command's pid once it runs (None for FD
    alone, which runs nothing)."""
    kind = None if args.kind is None else LockType(args.kind)
    name = tf._locks.backend.name  # the lock file's path, the descriptor, or the lock's URL
    status = Status(sys.stderr, name, kind) if args.verbose and kind is not None else None
    start = time.monotonic()
    inherit: int | None = None  # the lock file's descriptor, for the command
    try:
        if kind is None:  # -u: give back what the descriptor holds (on a new file: nothing)
            assert isinstance(tf, TouchFile)
            inherit = tf._unlock()
        else:
            _acquire(tf, kind, args.timeout, status)
            if isinstance(tf, TouchFile):
                inherit = tf._fileno()
        if args.fd is not None or args.close:
            inherit = None  # FD: the command has the caller's own; -o: none
        if status:
            status.end("")
    except _Stopped as stop:
        if status:
            status.end("")
        raise _Exit(128 + stop.signum, signum=stop.signum) from None
    except LockTimeout:  # busy with -n, or -w expired
        if status:
            status.end("")
        if args.verbose:
            expired = args.timeout != 0
            say("timeout while waiting to get lock" if expired else "failed to get lock")
        raise _Exit(int(args.conflict_exit_code)) from None
    except OSError as error:
        if status:
            status.end("")
        if error.strerror is None:  # PostgreSQL: the connection, said in one line
            raise _Exit(EX_UNAVAILABLE, str(error)) from None
        # Named as given, as flock(1) names it.
        raise _lock_error(error, args.lockfile or str(args.fd)) from None
    except LockError as error:  # the server failed a statement
        if status:
            status.end("")
        raise _Exit(EX_UNAVAILABLE, str(error)) from None
    return start_command(args, inherit, watched, ignored, start)


def _acquire(tf: LockBase, kind: LockType, timeout: float | None, status: Status | None) -> None:
    """Take the lock within timeout.

    With -v the wait is cut into slices under one Context, whose deadline is
    the whole wait's: each slice is a kernel wait, and the status is told in
    between; a try comes first in each, so a lock freed between two slices
    is taken at once.
    """
    start = time.monotonic()
    if status is None or timeout == 0:
        tf.acquire(kind, timeout)
        return
    if tf._locks.backend.remote:
        _acquire_told(tf, kind, timeout, status)
        return
    whole = Context.with_timeout(math.inf if timeout is None else timeout)
    report_at = start + 1.0
    found: list[Holder] | None = None
    found_at = -math.inf
    while True:
        try:
            tf.acquire(kind, max(0.0, report_at - time.monotonic()), ctx=whole)
            return
        except LockTimeout:
            if whole.remaining() <= 0:
                # A done context fails at once: one last try, without it, for
                # a lock freed while we looked for its holders.
                tf.acquire(kind, 0)
                return
        if found_at + HOLDERS_EVERY <= time.monotonic():
            # Looking through /proc takes a while on a busy machine (130 ms
            # with 12,000 descriptors), so holders are refreshed less often.
            found, found_at = holders_or_none(tf), time.monotonic()
        status.waiting(time.monotonic() - start, found)
        report_at = time.monotonic() + 0.5 if status.tty else math.inf


def _acquire_told(tf: LockBase, kind: LockType, timeout: float | None, status: Status) -> None:
    """-v on a server: one wait, as slices would leave the server's queue
    and lose their place in it; a thread tells the status meanwhile."""
    start = time.monotonic()
    done = threading.Event()

    def tell() -> None:
        found: list[Holder] | None = None
        found_at = -math.inf
        delay: float | None = 1.0
        while not done.wait(delay):
            if found_at + HOLDERS_EVERY <= time.monotonic():
                found, found_at = holders_or_none(tf), time.monotonic()
            if not done.is_set():
                status.waiting(time.monotonic() - start, found)
            delay = 0.5 if status.tty else None  # not a terminal: said once

    teller = threading.Thread(target=tell, daemon=True)
    teller.start()
    try:
        tf.acquire(kind, timeout)
    finally:
        done.set()
        teller.join()
