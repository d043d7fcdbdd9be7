"""The touchfile command: run a command holding a lock, as util-linux flock(1) does.

Options, the lock's inheritance and the exit statuses (sysexits.h) follow
flock(1), so that scripts can switch between the two; touchfile adds
--holders and -v's holders, which say who holds the lock. Parsing lives in
_cli_args.py, what the command says in _cli_report.py, opening and waiting
in _cli_run.py, and running the command (supervised, or exec'd) in
_cli_exec.py.

This module is the entry point, and it is lean on purpose: a free lock is
taken before the rest of touchfile is imported (about 20 ms of imports), with
one non-blocking try on the lock file's descriptor. If that try took the
lock, _cli_exec runs the command at once, and nothing more is imported;
otherwise _cli_run adopts that descriptor and takes the lock through the one
acquisition path, waiting as needed.
"""

from __future__ import annotations

import errno
import fcntl  # as _lockop does: the first try needs nothing heavier
import os
import sys
import time

from . import _cli_report
from ._cli_args import VERSION, Args, UsageError, parse, version
from ._cli_report import name_program, say
from ._lockop import OFD, lock_op
from ._open import open_lock_file

# A LOCKFILE that is a lock on PostgreSQL: postgresql://user@host/db#NAME.
URL_SCHEMES = ("postgresql://", "postgres://")

# Exit statuses: the command's own (128+N if it died of signal N), -E CODE
# (default 1) if the lock stayed busy, death by stop signal N if it ended the
# wait; otherwise sysexits.h, as flock(1) uses them:
EX_USAGE = 64  # a bad command line
EX_DATAERR = 65  # the lock cannot be taken (FD is not open, say)
EX_NOINPUT = 66  # the lock file cannot be opened (or read, for --holders)
EX_UNAVAILABLE = 69  # the command cannot be executed; --holders unsupported here
EX_OSERR = 71  # out of memory or descriptors
EX_CANTCREAT = 73  # read-only file system, or no space
EX_PROTOCOL = 76  # the PostgreSQL lock was lost while the command ran
EX_NOPERM = 77  # PostgreSQL refused us (authentication)
EX_CONFIG = 78  # a bad TOUCHFILE_* environment variable
# PostgreSQL cannot be reached (refused, DNS, TLS, lost), or the psycopg
# extra is not installed: EX_UNAVAILABLE, as for a command that cannot run.


# The lock file cannot be opened: errno -> status (EX_NOINPUT otherwise).
OPEN_ERRORS = {
    errno.ENOMEM: EX_OSERR,
    errno.EMFILE: EX_OSERR,
    errno.ENFILE: EX_OSERR,
    errno.EROFS: EX_CANTCREAT,
    errno.ENOSPC: EX_CANTCREAT,
}
# The lock cannot be taken: errno -> status (EX_DATAERR otherwise), as
# flock(1); also when it could not be opened read-write, as --fcntl -x needs.
LOCK_ERRORS = {errno.ENOLCK: EX_OSERR, errno.ENOMEM: EX_OSERR, errno.EMFILE: EX_OSERR,
               errno.EACCES: EX_NOINPUT, errno.EPERM: EX_NOINPUT, **OPEN_ERRORS}  # fmt: skip


class _Exit(Exception):
    """The command line ends here, with status (and message, on stderr); or
    by dying of signal signum, as flock(1) does when a signal ends its wait."""

    def __init__(self, status: int, message: str = "", signum: int = 0) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.signum = signum


class _Stopped(BaseException):
    """A stop signal arrived while waiting for the lock (raised by its handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def open_error(lockfile: str, error: OSError) -> _Exit:
    """The lock file cannot be opened: the status and the line that say so."""
    status = OPEN_ERRORS.get(error.errno or 0, EX_NOINPUT)
    return _Exit(status, f"cannot open lock file {lockfile}: {error.strerror}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        _open_standard_descriptors()
        if argv is None:
            name_program(sys.argv[0])
        args = parse(sys.argv[1:] if argv is None else argv)
        if args.show:
            sys.stdout.write(version() if args.show == VERSION else args.show)
            return 0
        start = time.monotonic()
        held, granted = _first_try(args)
        lean = held is not None and granted and _runs_at_once(args, held)
        try:
            if lean:
                from . import _cli_exec
            else:
                from . import _cli_run
        except OSError as error:  # out of descriptors, say: no module can be read
            raise _Exit(EX_OSERR, f"cannot load touchfile's modules: {error.strerror}") from None
        if lean:
            assert held is not None
            return _cli_exec.run_granted(args, held, start)
        return _cli_run.run(args, held)
    except UsageError as error:
        say(f"{error} (see {_cli_report.program} --help)")
        return EX_USAGE
    except _Exit as end:
        if end.message:
            say(end.message)
        if end.signum:
            _die_of(end.signum)
        return end.status
    except _Stopped as stop:  # before the wait (opening the lock file, say)
        _die_of(stop.signum)
        return 128 + stop.signum
    except KeyboardInterrupt:  # Ctrl-C before our handlers were in place
        import signal

        _die_of(signal.SIGINT)
        return 128 + signal.SIGINT


def _first_try(args: Args) -> tuple[int | None, bool]:
    """One non-blocking try of the lock file's lock, before anything else is
    imported: a descriptor of the lock file, and whether the try locked it,
    for _cli_exec to run the command with, or _cli_run to adopt (None where
    there is nothing to try: no lock file, -u,
    --holders, PostgreSQL; and for FD, whose lock is the caller's: a try there
    would leave it locked if the command then failed, on a bad environment
    variable, say). Raises _Exit if the lock file cannot be opened; errors of
    the try are left for the full path to meet again, and say."""
    lockfile = args.lockfile
    if not lockfile or lockfile.startswith(URL_SCHEMES) or args.kind is None or args.holders:
        return None, False
    path = os.path.abspath(lockfile)
    # An exclusive fcntl() lock needs the file open for writing: open it so,
    # as flock(1) does, and a directory read-only (its lock then fails).
    writable = args.method == "fcntl" and args.kind == "exclusive"
    try:
        # As FlockPolling opens it: the same path, mode and walk.
        try:
            fd = open_lock_file(path, 0o666, writable=writable)
        except IsADirectoryError:
            fd = open_lock_file(path, 0o666)
    except OSError as error:  # the full path's open would fail alike
        raise open_error(lockfile, error) from None
    op = (fcntl.LOCK_EX if args.kind == "exclusive" else fcntl.LOCK_SH) | fcntl.LOCK_NB
    op |= OFD if args.method == "fcntl" else 0
    try:
        lock_op(fd, op, args.span)
    except OSError:  # busy, or an error the full path meets again and reports
        return fd, False
    return fd, True


def _runs_at_once(args: Args, fd: int) -> bool:
    """The first try took the lock: can the command run now, with no more of
    touchfile than _cli_exec? Yes if the path still names the locked file (a
    lock on a file removed or replaced meanwhile guards nothing; the full path
    reopens it), and no TOUCHFILE_* variable says how to wait (the full path
    checks them, as it does before every wait). (A lock file always comes
    with a command: FD alone, -u and --holders make no first try.)"""
    if "TOUCHFILE_NATIVE" in os.environ or "TOUCHFILE_SIGNAL" in os.environ:
        return False
    try:
        named = os.stat(os.path.abspath(str(args.lockfile)))
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _die_of(signum: int) -> None:
    """Die of signal signum, as flock(1) does, so that a parent's waitpid()
    sees the signal; everything is cleaned up by now."""
    import contextlib
    import signal

    with contextlib.suppress(OSError, ValueError):  # stdout gone: nothing to lose
        sys.stdout.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})  # delivered here, the latest


def _open_standard_descriptors() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr, so that the lock
    file's descriptor never takes their place (the command would write to
    the lock file as its output)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null == fd:
                # os.open() is close-on-exec: the command would find fd
                # closed, and the next file it opens would become its stdout.
                os.set_inheritable(fd, True)
            else:
                os.dup2(null, fd)  # inheritable
                os.close(null)
