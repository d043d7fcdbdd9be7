"""The touchfile command, once _cli.py has parsed its arguments and tried
the lock: this module runs it through its states, opening the lock file,
waiting, granted, running (supervised until it exits, or exec'd in place
with -F), and gives its exit status.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _cli_report
from ._cli import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_OSERR,
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
from ._cli_report import HOLDERS_EVERY, Status, holders_or_none, print_holders, say, tell
from ._context import Context
from ._errors import LockError, LockTimeout
from ._holders import holders
from ._kinds import LockType
from ._lock import LockBase, TouchFile

if TYPE_CHECKING:
    from ._cli_report import Holder
    from .postgres import PostgresLock

# si_code of a signal the kernel itself sent: the terminal's Ctrl-C, Ctrl-\
# and hangup, which went to the whole foreground process group.
SI_KERNEL = 0x80

# The signals that end a wait (exit 128+N), and that are passed on to the
# command while it runs.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Signals Python ignores, which the command gets with their default action.
# (glibc's posix_spawn() leaves its own internal signals 32 and 33 ignored
# in the command; Python cannot name them to reset them.)
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def run(args: Args, held: int | None) -> int:
    """The command line, parsed and its lock tried once by _cli.main(): held is
    the lock file's descriptor, for the lock to adopt (None if there is none).
    Returns the exit status, or raises _cli's _Exit or _Stopped."""
    # A stop signal that came before this had its default action: touchfile
    # died of it, with nothing run, as it would die of it now.
    ignored = _catch_stop_signals()
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
    # With SIGCHLD ignored the kernel would reap the command itself, and its
    # status would be lost (flock(1) resets it too).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    tf = _open(args, held)
    remote = tf._locks.backend.remote
    watched = {*STOP_SIGNALS, signal.Signals.SIGCHLD}
    lost: _Lost | None = None
    if remote:
        watched.add(signal.Signals.SIGALRM)  # from _Lost: the lock was lost
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
    wait_status = _supervise(pid, watched, ignored, lost, args.keep_running, tf)
    was_lost = lost is not None and lost.fired  # before close() ends the hold too
    if (args.close or remote) and args.fd is None:
        tf.close()
    # Otherwise touchfile exits without unlocking, as flock(1) does: the
    # command shares the locked description, and whatever it left running
    # with the descriptor (a daemon, say) still holds the lock.
    if was_lost:
        return EX_PROTOCOL
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


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
    tf: LockBase, args: Args, watched: set[signal.Signals], ignored: set[int]
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
        waited = time.monotonic() - start
        # From here on the stop signals wait blocked, for sigwaitinfo() to
        # take them and pass them on; the handler of one that came before
        # runs at the latest with the next call, and still ends everything.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        if status:
            status.end("")
        if args.verbose:
            tell(f"getting lock took {waited:.6f} seconds")
        if not args.argv:
            return None
        if args.verbose:
            tell(f"executing {args.argv[0]}")
        # A stop signal blocked since the grant, Ctrl-C at the terminal say,
        # came before the command existed: nothing may run.
        pending = signal.sigpending() & set(STOP_SIGNALS) - ignored
        if pending:
            raise _Stopped(signal.sigwaitinfo(pending).si_signo)
        if inherit is not None:
            os.set_inheritable(inherit, True)
        if args.no_fork:
            _exec(args, mask, ignored)
        return _spawn(args, mask)
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
    except _CannotRun as cannot:
        error = cannot.error
        code = EX_OSERR if error.errno == errno.ENOMEM else EX_UNAVAILABLE
        raise _Exit(code, f"failed to execute {args.argv[0]}: {error.strerror}") from None
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


def _catch_stop_signals() -> set[int]:
    """Until the command runs, a stop signal raises _Stopped. Signals ignored
    when touchfile started (as under nohup) stay ignored; returns them."""

    stopping: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        # One is enough: later ones wait blocked, and die with the process.
        # A second signal that came with the first must not raise again: it
        # would land in the cleanup of the first (a lock's release, say).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if not stopping:
            stopping.append(signum)
            raise _Stopped(signum)

    ignored = set()
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            ignored.add(int(signum))
        else:
            signal.signal(signum, stop)
    return ignored


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


def _spawn(args: Args, mask: Iterable[int]) -> int:
    """Start the command (with whatever descriptor was made inheritable for
    it: the lock's); its pid. With -o and --fd, FD is closed in the command."""
    actions: list[tuple[int, int]] = []
    if args.fd is not None and args.close:
        actions.append((os.POSIX_SPAWN_CLOSE, args.fd))

    def spawn(argv: list[str]) -> int:
        return os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            file_actions=actions,
            setsigmask=mask,  # the command starts with the mask touchfile had
            setsigdef=RESET_SIGNALS,
        )

    return _run_program(args.argv, spawn)


def _exec(args: Args, mask: Iterable[int], ignored: set[int]) -> None:
    """-F: become the command, which holds the lock through the descriptor
    made inheritable for it (returns only on failure, raising _CannotRun). A
    stop signal from here on has its default action, as for any command."""
    for signum in (*STOP_SIGNALS, *RESET_SIGNALS):
        if signum not in ignored:
            signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()

    def execute(argv: list[str]) -> int:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            os.execvp(argv[0], argv)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    _run_program(args.argv, execute)


class _CannotRun(Exception):
    """The command cannot be executed (exit 69): error says why."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _run_program(argv: list[str], start: Callable[[list[str]], int]) -> int:
    """start(argv), as execvp() would run it: an executable file that is not
    a program (a script without "#!") runs with sh. Raises _CannotRun."""
    if not argv[0]:
        raise _CannotRun(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0]))
    try:
        try:
            return start(argv)
        except OSError as error:
            program = _which(argv[0]) if error.errno == errno.ENOEXEC else None
            if program is None:
                raise
            return start(["/bin/sh", program, *argv[1:]])
    except OSError as error:
        raise _CannotRun(error) from None


def _which(name: str) -> str | None:
    import shutil  # rarely needed: not on every command's start-up

    return shutil.which(name)


def _supervise(
    pid: int,
    watched: set[signal.Signals],
    ignored: set[int],
    lost: _Lost | None,
    keep_running: bool,
    lk: LockBase,
) -> int:
    """Wait for the command, passing the stop signals on, and ending it if a
    PostgreSQL lock is lost; returns its wait status."""
    told = False
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo in ignored:
            continue  # ignored when touchfile started: the command ignores it too
        if info.si_signo == signal.SIGALRM:
            if lost is not None and lost.fired and not told:
                told = True
                then = "leaving it running" if keep_running else "sending it SIGTERM"
                say(f"lost the lock on {lk._locks.backend.name} while the command ran; {then}")
                if not keep_running:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            continue
        if info.si_signo != signal.SIGCHLD:
            # A signal the kernel sent to the foreground process group
            # (Ctrl-C at the terminal) reached the command already: sending
            # it again would make it see two.
            if info.si_code != SI_KERNEL:
                with contextlib.suppress(ProcessLookupError):  # exited: SIGCHLD is coming
                    os.kill(pid, info.si_signo)
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
