"""The touchfile command's arguments: flock(1)'s options, and touchfile's own."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ._context import check_timeout
from ._kinds import EXCLUSIVE, SHARED
from ._version import __version__

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
command cannot be executed.

LOCKFILE may be a lock on PostgreSQL instead, postgresql://user@host/db#NAME
(or postgres://), shared by every host that uses the database: the lock is
held by touchfile's own session while the command runs, and ends with it,
even if touchfile is killed. Then 69 means the server cannot be reached, and
77 that it refused us. NAME is hashed as hashtextextended('NAME', 0). If the
lock is lost while the command runs (its session ended), touchfile says so
and sends the command SIGTERM (--keep-running: leaves it running), then
exits 76 once the command has ended."""

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
        list the processes holding a lock on the file (pid, kind, command)
  touchfile -n 'postgresql://cron@db1/ops#nightly-report' -- ./report.sh
        run the report on one host of many; the others exit 1"""

# Options that take a value, for finding where the options end.
_VALUED_SHORT = "wEc"
_VALUED_LONG = ("--wait", "--timeout", "--conflict-exit-code", "--command")


class UsageError(Exception):
    """A bad command line (exit 64)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


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
    add("--keep-running", action="store_true",
        help="if a PostgreSQL lock is lost as the command runs, do not SIGTERM it")  # fmt: skip
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


def parse(argv: list[str]) -> argparse.Namespace:
    head, rest = _split(argv)
    args = _parser().parse_args(head)
    if args.lockfile is None:
        raise UsageError("no LOCKFILE given")
    if rest and rest[0] == "--":
        rest = rest[1:]
    elif rest and (rest[0] in ("-c", "--command") or rest[0].startswith("--command=")):
        if args.command is not None:
            raise UsageError("-c given twice")
        given = rest[0].partition("=")[2:] if "=" in rest[0] else rest[1:]
        if len(given) != 1:
            raise UsageError("-c takes exactly one argument, the shell command")
        args.command, rest = given[0], []
    if args.holders:
        if rest or args.command is not None:
            raise UsageError("--holders takes only LOCKFILE, no command")
        return args
    if args.command is not None:
        if rest:
            raise UsageError("give either -c 'SHELL COMMAND' or COMMAND [ARGS...], not both")
        args.argv = ["/bin/sh", "-c", args.command]
    elif rest:
        args.argv = rest
    else:
        raise UsageError("no command given (touchfile LOCKFILE COMMAND, or LOCKFILE -c '...')")
    # -w 0 is -n, and -n wins over -w, as with flock(1).
    args.timeout = 0.0 if args.nonblock else args.wait
    return args
