"""The touchfile command: run a command holding a lock, as util-linux flock(1) does.

Options, the lock's inheritance and the exit statuses (sysexits.h) follow
flock(1), so that scripts can switch between the two; touchfile adds
--holders and -v, which say who holds the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any, NoReturn, TextIO

from ._context import check_timeout
from ._errors import LockError
from ._holders import LockHolder, holders
from ._kinds import EXCLUSIVE, SHARED, LockType
from ._lock import TouchFile
from ._version import __version__

# sysexits.h, as flock(1) uses them.
EX_USAGE = 64  # bad command line
EX_NOINPUT = 66  # the lock file cannot be opened
EX_UNAVAILABLE = 69  # the command cannot be executed; --holders unsupported here
EX_OSERR = 71  # out of memory or descriptors
EX_CANTCREAT = 73  # read-only file system, or no space
EX_CONFIG = 78  # a bad TOUCHFILE_* environment variable

# si_code of a signal the kernel itself sent: the terminal's Ctrl-C, Ctrl-\
# and hangup, which went to the whole foreground process group.
SI_KERNEL = 0x80

# The signals that end a wait (exit 128+N), and that are passed on to the
# command while it runs.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

USAGE = """\
touchfile [-s | -x] [-n | -w SECONDS] [-E CODE] [-o] [-v] LOCKFILE [--] COMMAND [ARGS...]
       touchfile [-s | -x] [-n | -w SECONDS] [-E CODE] [-o] [-v] LOCKFILE -c 'SHELL COMMAND'
       touchfile --holders LOCKFILE"""

DESCRIPTION = """\
Run COMMAND holding a lock on LOCKFILE (created if missing, never truncated;
a directory will do), as util-linux flock(1) does. The wait blocks in the
kernel, so the command starts the moment the lock is free. The command
inherits the lock, which stays held until it and every process it passed the
descriptor to have exited, even if touchfile itself is killed (-o: the
command does not inherit it).

Exit status: the command's own (128+N if it died of signal N); CODE (default
1) if the lock was busy with -n or stayed busy for the -w SECONDS; 128+N if
signal N (SIGINT, SIGTERM, SIGHUP) ended the wait, in which case nothing
ran; 64 for a bad command line, 66 if LOCKFILE cannot be opened, 69 if the
command cannot be executed."""

EPILOG = """\
examples:
  touchfile /tmp/backup.lock -- rsync -a /src/ /backup/
        wait for the lock, then run rsync holding it
  touchfile -n /tmp/report.lock -c 'make report && mail-report'
        run the shell command only if no one else holds the lock (else exit 1)
  touchfile -w 30 -E 75 /tmp/deploy.lock ./deploy.sh
        wait at most 30 s; exit 75 if the lock is still busy by then
  touchfile -s /var/lib/app/cache.lock -- ./read-cache
        a shared lock: many readers at once, never beside an exclusive holder
  touchfile -v /tmp/backup.lock -- rsync -a /src/ /backup/
        say who holds the lock if the wait lasts more than a second
  touchfile --holders /tmp/backup.lock
        list the processes holding a lock on the file (pid, kind, command)"""

# Signals Python ignores, which the command gets with their default action.
# (glibc's posix_spawn() leaves its own internal signals 32 and 33 ignored
# in the command; Python cannot name them to reset them.)
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

# How often -v on a terminal looks again for who holds the lock, in seconds.
HOLDERS_EVERY = 2.0

# Options that take a value, for finding where the options end.
_VALUED_SHORT = "wEc"
_VALUED_LONG = ("--wait", "--timeout", "--conflict-exit-code", "--command")


class _UsageError(Exception):
    pass


class _Stopped(BaseException):
    """A stop signal arrived while waiting for the lock (raised by its handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _seconds(text: str) -> float:
    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid timeout {text!r}: expected a number of seconds >= 0"
        ) from None


def _exit_code(text: str) -> int:
    code = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= code <= 255:
        raise argparse.ArgumentTypeError(f"invalid exit code {text!r}: expected 0 to 255")
    return code


def _parser() -> _Parser:
    p = _Parser(
        prog="touchfile",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add = p.add_argument
    add("-s", "--shared", dest="kind", action="store_const", const=SHARED, default=EXCLUSIVE,
        help="take a shared lock (many holders at once)")  # fmt: skip
    add("-x", "-e", "--exclusive", dest="kind", action="store_const", const=EXCLUSIVE,
        help="take an exclusive lock (the default)")  # fmt: skip
    add("-n", "--nonblock", "--nb", action="store_true",
        help="fail at once if the lock is busy (exit CODE)")  # fmt: skip
    add("-w", "--wait", "--timeout", metavar="SECONDS", type=_seconds,
        help="fail if the lock is still busy after SECONDS (a decimal; 0 = -n)")  # fmt: skip
    add("-E", "--conflict-exit-code", metavar="CODE", type=_exit_code, default=1,
        help="exit status when the lock is busy (-n) or -w expires (default 1)")  # fmt: skip
    add("-o", "--close", action="store_true",
        help="the command does not inherit the lock (touchfile holds it alone)")  # fmt: skip
    add("-c", "--command", metavar="'SHELL COMMAND'",
        help="run SHELL COMMAND with sh -c")  # fmt: skip
    add("-v", "--verbose", action="store_true",
        help="say on stderr who holds the lock once the wait passes 1 s")  # fmt: skip
    add("--holders", action="store_true",
        help="list the processes holding a lock on LOCKFILE, and exit")  # fmt: skip
    add("-V", "--version", action="version", version=f"touchfile {__version__}")
    add("lockfile", metavar="LOCKFILE", nargs="?", help=argparse.SUPPRESS)
    return p


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options end at LOCKFILE, as with flock(1): (options + LOCKFILE, the rest)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[: i + 2], argv[i + 2 :]
        if arg.startswith("--"):
            if arg in _VALUED_LONG:
                i += 1  # its value is the next argument
        elif arg.startswith("-") and arg != "-":
            for j, letter in enumerate(arg[1:], 1):
                if letter in _VALUED_SHORT:  # the value is the rest, or the next argument
                    i += j == len(arg) - 1
                    break
        else:
            return argv[: i + 1], argv[i + 1 :]
        i += 1
    return argv, []


def _parse(argv: list[str]) -> argparse.Namespace:
    head, rest = _split(argv)
    args = _parser().parse_args(head)
    if args.lockfile is None:
        raise _UsageError("no LOCKFILE given")
    if rest and rest[0] == "--":
        rest = rest[1:]
    elif rest and (rest[0] in ("-c", "--command") or rest[0].startswith("--command=")):
        if args.command is not None:
            raise _UsageError("-c given twice")
        given = rest[0].partition("=")[2:] if "=" in rest[0] else rest[1:]
        if len(given) != 1:
            raise _UsageError("-c takes exactly one argument, the shell command")
        args.command, rest = given[0], []
    if args.holders:
        if rest or args.command is not None:
            raise _UsageError("--holders takes only LOCKFILE, no command")
        return args
    if args.command is not None:
        if rest:
            raise _UsageError("give either -c 'SHELL COMMAND' or COMMAND [ARGS...], not both")
        args.argv = ["/bin/sh", "-c", args.command]
    elif rest:
        args.argv = rest
    else:
        raise _UsageError("no command given (touchfile LOCKFILE COMMAND, or LOCKFILE -c '...')")
    # -w 0 is -n, and -n wins over -w, as with flock(1).
    args.timeout = 0.0 if args.nonblock else args.wait
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        # In the same try as the rest: a stop signal may arrive while the
        # handlers are being put in place, or just after.
        ignored = _catch_stop_signals()
        _open_standard_descriptors()
        args = _parse(sys.argv[1:] if argv is None else argv)
        if args.holders:
            return _show_holders(args.lockfile)
        return _run(args, ignored)
    except _UsageError as error:
        _say(f"{error} (see touchfile --help)")
        return EX_USAGE
    except _Stopped as stop:  # before the wait (opening the lock file, say)
        return 128 + stop.signum
    except KeyboardInterrupt:  # Ctrl-C before our handlers were in place
        return 128 + signal.SIGINT


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


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr gone
        sys.stderr.write(f"touchfile: {_printable(message)}\n")
        sys.stderr.flush()


def _show_holders(path: str) -> int:
    try:
        found = holders(path)
    except NotImplementedError as error:
        _say(str(error))
        return EX_UNAVAILABLE
    except OSError as error:
        _say(f"cannot read lock file {path}: {error.strerror}")
        return EX_NOINPUT
    if not found:
        print(f"no process holds a lock on {_printable(path)}")
        return 0
    width = max(len("PID"), *(len(str(h.pid)) for h in found))
    print(f"{'PID':<{width}}  {'KIND':<9}  COMMAND")
    for h in found:
        print(f"{h.pid:<{width}}  {h.kind.value:<9}  {_printable(h.command)}")
    return 0


def _run(args: argparse.Namespace, ignored: set[int]) -> int:
    kind: LockType = args.kind
    # With SIGCHLD ignored the kernel would reap the command itself, and its
    # status would be lost (flock(1) resets it too).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        tf = TouchFile(args.lockfile, mode=0o666)  # as flock(1): 0666 less the umask
    except OSError as error:
        _say(f"cannot open lock file {args.lockfile}: {error.strerror}")
        if error.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            return EX_OSERR
        if error.errno in (errno.EROFS, errno.ENOSPC):
            return EX_CANTCREAT
        return EX_NOINPUT
    except (ValueError, RuntimeError) as error:  # TOUCHFILE_NATIVE / TOUCHFILE_SIGNAL
        _say(str(error))
        return EX_CONFIG
    status = _Status(sys.stderr, tf.path, kind) if args.verbose else None
    watched = {*STOP_SIGNALS, signal.Signals.SIGCHLD}
    start = time.monotonic()
    try:
        waited = _acquire(tf, kind, args.timeout, status)
        # From here on the stop signals wait blocked, for sigwaitinfo() to
        # take them and pass them on; the handler of one that came before
        # runs at the latest with the next call, and still ends everything.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        if status:
            status.end(f"took the {kind.value} lock on {tf.path} after {waited:.3f} s")
            _say(f"executing {shlex.join(args.argv)}")
        # A stop signal blocked since the grant, Ctrl-C at the terminal say,
        # came before the command existed: nothing may run.
        pending = signal.sigpending() & set(STOP_SIGNALS) - ignored
        if pending:
            raise _Stopped(signal.sigwaitinfo(pending).si_signo)
        pid = _spawn(tf, args.argv, mask, inherit=not args.close)
    except _Stopped as stop:
        if status:
            status.end(f"{signal.Signals(stop.signum).name} ended the wait; nothing ran")
        tf.close()
        return 128 + stop.signum
    except LockError:  # LockTimeout: busy with -n, or -w expired
        if status:
            waited = time.monotonic() - start
            status.end(f"gave up after {waited:.3f} s: {tf.path} is still locked")
        tf.close()
        return int(args.conflict_exit_code)
    except OSError as error:
        tf.close()
        if error.filename == args.argv[0]:
            _say(f"failed to execute {args.argv[0]}: {error.strerror}")
            return EX_OSERR if error.errno == errno.ENOMEM else EX_UNAVAILABLE
        if status:
            status.end("")
        _say(f"cannot lock {tf.path}: {error.strerror}")
        return EX_OSERR
    wait_status = _supervise(pid, watched, ignored)
    if args.close:
        tf.close()
    # Otherwise touchfile exits without unlocking, as flock(1) does: the
    # command shares the locked description, and whatever it left running
    # with the descriptor (a daemon, say) still holds the lock.
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


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


def _acquire(tf: TouchFile, kind: LockType, timeout: float | None, status: _Status | None) -> float:
    """Take the lock within timeout; returns the seconds waited.

    With -v the wait is cut into slices, each one a kernel wait, so that
    the status can be told in between; a try comes first in each, so a lock
    freed between two slices is taken at once.
    """
    start = time.monotonic()
    if status is None:
        tf.acquire(kind, timeout)
        return time.monotonic() - start
    deadline = math.inf if timeout is None else start + timeout
    report_at = start + 1.0
    found: list[LockHolder] | None = None
    found_at = -math.inf
    while True:
        try:
            tf.acquire(kind, max(0.0, min(deadline, report_at) - time.monotonic()))
            return time.monotonic() - start
        except LockError:
            if time.monotonic() >= deadline:
                raise
        if found_at + HOLDERS_EVERY <= time.monotonic():
            # Looking through /proc takes a while on a busy machine (80 ms
            # with 12,000 descriptors), so holders are refreshed less often.
            found, found_at = _holders_or_none(tf), time.monotonic()
        status.waiting(time.monotonic() - start, found)
        report_at = time.monotonic() + 0.5 if status.tty else math.inf


def _holders_or_none(tf: TouchFile) -> list[LockHolder] | None:
    try:
        return tf.holders()
    except (NotImplementedError, OSError):
        return None


class _Status:
    """What -v says on stderr: one line per event, or, on a terminal, one
    status line kept up to date while waiting."""

    def __init__(self, stream: TextIO, path: str, kind: LockType) -> None:
        self.stream = stream
        self.path = path
        self.kind = kind
        self.tty = stream.isatty()
        self.showing = False

    def waiting(self, elapsed: float, found: list[LockHolder] | None) -> None:
        if found is None:
            who = "; who holds it cannot be known here"
        elif not found:
            who = ""
        elif len(found) == 1:
            who = f", held by {_describe(found[0])}"
        else:
            who = f", held by {len(found)} processes: " + "; ".join(map(_describe, found))
        path = _printable(self.path)
        text = f"touchfile: waiting {elapsed:.1f} s to lock {path} ({self.kind.value}){who}"
        if self.tty:
            try:
                width = os.get_terminal_size(self.stream.fileno()).columns or 80
            except OSError:
                width = 80
            self._write("\r\x1b[K" + text[: max(width - 1, 20)])
            self.showing = True
        else:
            self._write(text + "\n")

    def end(self, message: str) -> None:
        if self.showing:
            self._write("\r\x1b[K")
            self.showing = False
        if message:
            self._write(f"touchfile: {_printable(message)}\n")

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # stderr gone: say nothing
            self.stream.write(text)
            self.stream.flush()


def _describe(holder: LockHolder) -> str:
    return f"pid {holder.pid} ({holder.kind.value}): {_printable(holder.command)}"


def _printable(text: str | None) -> str:
    """Text fit for one line of a terminal: control characters (newlines,
    escape sequences) are shown escaped, never sent as they are. Everything
    touchfile prints that it did not write itself (paths, command lines) goes
    through here."""
    if text is None:
        return "?"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _spawn(tf: TouchFile, argv: list[str], mask: Iterable[int], inherit: bool) -> int:
    """Start the command (it inherits the locked descriptor if inherit); its pid."""
    if inherit:
        os.set_inheritable(tf._fileno(), True)

    def spawn(argv: list[str]) -> int:
        return os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            setsigmask=mask,  # the command starts with the mask touchfile had
            setsigdef=RESET_SIGNALS,
        )

    if not argv[0]:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    try:
        try:
            return spawn(argv)
        except OSError as error:
            # An executable file that is not a program (a script without
            # "#!") runs with sh, as execvp() and so flock(1) run it.
            program = shutil.which(argv[0]) if error.errno == errno.ENOEXEC else None
            if program is None:
                raise
            return spawn(["/bin/sh", program, *argv[1:]])
    except OSError as error:
        error.filename = argv[0]
        raise


def _supervise(pid: int, watched: set[signal.Signals], ignored: set[int]) -> int:
    """Wait for the command, passing the stop signals on; returns its wait status."""
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo in ignored:
            continue  # ignored when touchfile started: the command ignores it too
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
