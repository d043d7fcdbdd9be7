"""The touchfile command's arguments: flock(1)'s options, and touchfile's own.

Parsed as util-linux flock(1) parses them (getopt_long with "+"): options end
at the first argument that is not one, long options may be abbreviated to
any unambiguous prefix (--nonblock, --excl), and a value may be attached
(-w5, --timeout=5) or follow. An abbreviation that fits one of flock(1)'s
options means that option, even where it also fits one of touchfile's own
(--h is --help), so that every spelling flock(1) takes means the same here.

The command parses before it imports the rest of touchfile (see _cli.py), so
this module imports nothing of it but the version.
"""

from __future__ import annotations

import os

from ._version import __version__

USAGE = """\
usage: touchfile [options] LOCKFILE [--] COMMAND [ARGS...]
       touchfile [options] LOCKFILE -c 'SHELL COMMAND'
       touchfile [options] FD
       touchfile [options] --fd FD COMMAND [ARGS...]   (or -c 'SHELL COMMAND')
       touchfile --holders LOCKFILE"""

DESCRIPTION = """\
Run COMMAND holding a lock on LOCKFILE (created if missing, never truncated;
a directory will do), as util-linux flock(1) does. The wait blocks in the
kernel, so the command starts the moment the lock is free. The command
inherits the lock, which stays held until it and every process it passed the
descriptor to have exited, even if touchfile itself is killed (-o: the
command does not inherit it). FD alone, a number: lock that descriptor,
which the shell opened (exec 9>FILE; touchfile -n 9), and exit; the lock
stays with the shell's descriptor (-u 9 gives it back).

Exit status: the command's own (128+N if it died of signal N); CODE (default
1) if the lock was busy with -n or stayed busy for the -w SECONDS; if signal
N (SIGINT, SIGTERM, SIGHUP) ended the wait, touchfile dies of it and nothing
ran; 64 for a bad command line, 65 if the lock cannot be taken (FD is not
open, say), 66 if LOCKFILE cannot be opened, 69 if the command cannot be
executed.

LOCKFILE may be a lock on PostgreSQL instead, postgresql://user@host/db#NAME
(or postgres://), shared by every host that uses the database: the lock is
held by touchfile's own session while the command runs, and ends with it,
even if touchfile is killed. Then 69 means the server cannot be reached, and
77 that it refused us. NAME is hashed as hashtextextended('NAME', 0). If the
lock is lost while the command runs (its session ended), touchfile says so
and sends the command SIGTERM (--keep-running: leaves it running), then
exits 76 once the command has ended."""

OPTIONS = """\
options:
  -s, --shared             take a shared lock (many holders at once)
  -x, -e, --exclusive      take an exclusive lock (the default)
  -u, --unlock             give back the lock on FD (a no-op on LOCKFILE)
  -n, --nb, --nonblocking  fail at once if the lock is busy (exit CODE)
  -w, --timeout, --wait SECONDS
                           fail if the lock is still busy after SECONDS
                           (a decimal; 0 = -n)
  -E, --conflict-exit-code CODE
                           exit status when the lock is busy (-n) or -w
                           expires (default 1)
  -o, --close              the command does not inherit the lock (touchfile
                           holds it alone)
  -c, --command 'SHELL COMMAND'
                           run SHELL COMMAND with $SHELL -c (else /bin/sh)
  -F, --no-fork            execute the command in touchfile's place, without
                           forking (it holds the lock; not with -o)
      --fcntl              lock with fcntl(F_OFD_SETLKW), an open file
                           description's record lock, instead of flock()
      --start OFFSET       the byte range's start (implies --fcntl)
      --length LENGTH      the byte range's length, 0 = to the end (implies
                           --fcntl)
      --fd FD              lock descriptor FD around COMMAND
  -v, --verbose            say how long the wait took and what runs; and on
                           stderr, once the wait passes 1 s, who holds the lock
      --keep-running       if a PostgreSQL lock is lost as the command runs,
                           do not SIGTERM it
      --holders            list the processes holding a lock on LOCKFILE, and
                           exit
  -h, --help               show this help, and exit
  -V, --version            show the version, and exit"""

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
  exec 9>/var/lock/myjob.lock; touchfile -n 9 || exit 1
        in a script: hold the lock until the script exits (or touchfile -u 9)
  touchfile -v /tmp/backup.lock -- rsync -a /src/ /backup/
        say who holds the lock if the wait lasts more than a second
  touchfile --holders /tmp/backup.lock
        list the processes holding a lock on the file (pid, kind, command)
  touchfile -n 'postgresql://cron@db1/ops#nightly-report' -- ./report.sh
        run the report on one host of many; the others exit 1"""

HELP = f"{USAGE}\n\n{DESCRIPTION}\n\n{OPTIONS}\n\n{EPILOG}\n"
VERSION = f"touchfile {__version__}\n"  # and the mode: see version()

# Each option's key (its short letter, or its long name if it has none) and
# whether it takes a value: flock(1)'s, then touchfile's own.
_SHORT = {"s": False, "x": False, "e": False, "u": False, "n": False, "o": False, "F": False,
          "v": False, "h": False, "V": False, "w": True, "E": True, "c": True}  # fmt: skip
_FLOCK_LONG = {
    "shared": "s",
    "exclusive": "x",
    "unlock": "u",
    "nonblocking": "n",
    "nb": "n",
    "timeout": "w",
    "wait": "w",
    "conflict-exit-code": "E",
    "close": "o",
    "no-fork": "F",
    "verbose": "v",
    "fcntl": "fcntl",
    "start": "start",
    "length": "length",
    "fd": "fd",
    "help": "h",
    "version": "V",
}
_OWN_LONG = {"holders": "holders", "keep-running": "keep-running"}
_VALUED = {"w", "E", "c", "start", "length", "fd"}
# --help and --version: they act as soon as they are read, as in flock(1).
_AT_ONCE = {"h", "V"}
# The options that set one of Args' flags.
_FLAGS = {"o": "close", "F": "no_fork", "v": "verbose", "holders": "holders",
          "keep-running": "keep_running"}  # fmt: skip

# A size, as flock(1) reads --start and --length: a number and an optional
# unit (K, KiB = 1024; KB = 1000; then M, G, T, P, E).
_UNITS = "KMGTPEZY"


class UsageError(Exception):
    """A bad command line (exit 64)."""


class Args:
    """What the command line asks for."""

    def __init__(self) -> None:
        self.kind: str | None = "exclusive"  # "shared", or None: -u, give back
        self.timeout: float | None = None  # None: wait for ever; 0: -n
        self.conflict_exit_code = 1
        self.close = False
        self.no_fork = False
        self.verbose = False
        self.method = "flock"
        self.span = (0, 0)  # --start, --length
        self.lockfile: str | None = None  # a path or a postgresql:// URL
        self.fd: int | None = None  # --fd FD, or FD alone
        self.argv: list[str] = []  # the command; [] for FD alone
        self.holders = False
        self.keep_running = False
        self.show = ""  # HELP or VERSION: print it and exit 0


def parse(argv: list[str]) -> Args:
    args = Args()
    options, rest, command = _options(argv)
    nonblock = False
    wait: float | None = None
    start = length = 0
    for key, value in options:
        if key in ("h", "V"):
            args.show = HELP if key == "h" else VERSION
            return args
        if key == "s":
            args.kind = "shared"
        elif key in ("x", "e"):
            args.kind = "exclusive"
        elif key == "u":
            args.kind = None
        elif key == "n":
            nonblock = True
        elif key == "w":
            wait = _seconds(value)
        elif key == "E":
            args.conflict_exit_code = _exit_code(value)
        elif key in _FLAGS:
            setattr(args, _FLAGS[key], True)
        elif key == "fcntl":
            args.method = "fcntl"
        elif key == "start":
            start, args.method = _size(value, "start offset"), "fcntl"
        elif key == "length":
            length, args.method = _size(value, "length"), "fcntl"
        elif key == "fd":
            args.fd = _descriptor(value)
    args.span = (start, length)
    # -w 0 is -n, and -n wins over -w, as with flock(1).
    args.timeout = 0.0 if nonblock else wait
    if args.no_fork and args.close:
        raise UsageError("the --no-fork and --close options are incompatible")
    _positionals(args, rest, command)
    return args


def _options(argv: list[str]) -> tuple[list[tuple[str, str]], list[str], str | None]:
    """(the options as (key, value), the arguments after them, -c's command)."""
    options: list[tuple[str, str]] = []
    command: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            return options, argv[i:], command
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name == "command":  # never abbreviated, as with flock(1)
                key = "c"
            else:
                key, name = _long(name)
                if key not in _VALUED:
                    if eq:
                        raise UsageError(f"option '--{name}' doesn't allow an argument")
                    options.append((key, ""))
                    if key in _AT_ONCE:
                        return options, [], None
                    continue
            if not eq:
                if i == len(argv):
                    raise UsageError(f"option '--{name}' requires an argument")
                value, i = argv[i], i + 1
        elif arg.startswith("-") and arg != "-":
            for j, letter in enumerate(arg[1:], 2):
                if letter not in _SHORT:
                    raise UsageError(f"invalid option -- '{letter}'")
                if not _SHORT[letter]:
                    options.append((letter, ""))
                    if letter in _AT_ONCE:
                        return options, [], None
                    continue
                value = arg[j:]  # the rest of the argument, or the next one
                if not value:
                    if i == len(argv):
                        raise UsageError(f"option requires an argument -- '{letter}'")
                    value, i = argv[i], i + 1
                key = letter
                break
            else:
                continue
        else:
            return options, argv[i - 1 :], command
        if key == "c":
            if command is not None:
                raise UsageError("-c given twice")
            command = value
        else:
            options.append((key, value))
    return options, [], command


def _long(name: str) -> tuple[str, str]:
    """(key, full name) of the long option name abbreviates."""
    for table in (_FLOCK_LONG, _OWN_LONG):
        if name in table:
            return table[name], name
    for table in (_FLOCK_LONG, _OWN_LONG):
        found = sorted(full for full in table if full.startswith(name))
        if len({table[full] for full in found}) == 1:
            return table[found[0]], found[0]
        if found:
            choices = " ".join(f"'--{full}'" for full in found)
            raise UsageError(f"option '--{name}' is ambiguous; possibilities: {choices}")
    raise UsageError(f"unrecognized option '--{name}'")


def _positionals(args: Args, rest: list[str], command: str | None) -> None:
    """LOCKFILE (or FD) and the command, from what follows the options."""
    if args.holders:
        if len(rest) != 1 or command is not None or args.fd is not None:
            raise UsageError("--holders takes only LOCKFILE, no command")
        args.lockfile = rest[0]
        return
    if args.fd is None and command is None and len(rest) == 1:
        if _integer(rest[0]) is None:
            raise UsageError(
                f"no command given, and {rest[0]!r} is not a descriptor number "
                "(touchfile LOCKFILE COMMAND, touchfile LOCKFILE -c '...', or touchfile FD)"
            )
        args.fd = _descriptor(rest[0])  # FD alone: -o and -F do nothing, as with flock(1)
        return
    if args.fd is None:
        if not rest:
            raise UsageError("no LOCKFILE given")
        args.lockfile, rest = rest[0], rest[1:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        elif rest and (rest[0] in ("-c", "--command") or rest[0].startswith("--command=")):
            if command is not None:
                raise UsageError("-c given twice")
            given = [rest[0].partition("=")[2], *rest[1:]] if "=" in rest[0] else rest[1:]
            if len(given) != 1:
                option = rest[0].partition("=")[0]
                raise UsageError(f"{option} requires exactly one command argument")
            command, rest = given[0], []
    elif rest and rest[0] == "--":
        rest = rest[1:]
    if command is not None:
        if rest:
            raise UsageError("give either -c 'SHELL COMMAND' or COMMAND [ARGS...], not both")
        # $SHELL, as flock(1) runs it; /bin/sh when it is unset or empty.
        args.argv = [os.environ.get("SHELL") or "/bin/sh", "-c", command]
    elif rest:
        args.argv = rest
    elif args.fd is not None:
        raise UsageError("--fd FD needs a command (or give FD alone, without --fd)")
    else:
        raise UsageError("no command given (touchfile LOCKFILE COMMAND, or LOCKFILE -c '...')")


def version() -> str:
    """--version's line: the version, and how waits are made here."""
    from . import _native  # only here: it loads the native core (cffi)

    if not _native.AVAILABLE:
        mode = "polling waits: the native core is not built"
    elif os.environ.get("TOUCHFILE_NATIVE") == "0":
        mode = "polling waits: TOUCHFILE_NATIVE=0"
    else:
        mode = "native waits"
    return f"touchfile {__version__} ({mode})\n"


def _seconds(text: str) -> float:
    try:
        # As strtold(): no trailing space, no "_" between digits.
        seconds = -1.0 if "_" in text or text != text.rstrip() else float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # negative, or NaN
        raise UsageError(f"invalid timeout {text!r}: expected a number of seconds >= 0")
    return seconds


def _integer(text: str, base: int = 10) -> int | None:
    """text as strtoumax() reads a whole number: leading white space and "+"
    allowed; base 0: "0x" for hexadecimal, a leading 0 for octal. None if it
    is not one."""
    digits = text.lstrip(" \t\n\v\f\r")
    digits = digits[1:] if digits.startswith("+") else digits
    if base == 0:
        if digits[:2].lower() == "0x":
            base, digits = 16, digits[2:]
        elif digits[:1] == "0" and len(digits) > 1:
            base, digits = 8, digits[1:]
        else:
            base = 10
    if not digits or not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def _exit_code(text: str) -> int:
    code = _integer(text)
    if code is None or not 0 <= code <= 255:
        raise UsageError(f"invalid exit code {text!r}: expected 0 to 255")
    return code


def _descriptor(text: str) -> int:
    fd = _integer(text)
    if fd is None or not 0 <= fd <= 2**31 - 1:
        raise UsageError(f"invalid file descriptor {text!r}: expected a number >= 0")
    return fd


def _size(text: str, what: str) -> int:
    """A size as flock(1) reads --start and --length: a whole number (as
    _integer() in base 0), or a decimal one with a unit, and a unit: K, KiB =
    1024; KB = 1000; then M, G, T, P, E, Z, Y."""
    body = text.lstrip(" \t\n\v\f\r").removeprefix("+")
    hexadecimal = body[:2].lower() == "0x"
    digits = "0123456789abcdefABCDEF" if hexadecimal else "0123456789"
    end = 2 if hexadecimal else 0
    while end < len(body) and body[end] in digits:
        end += 1
    number, unit = body[:end], body[end:]
    fraction = ""
    if unit.startswith(".") and not hexadecimal:
        fraction = unit[1:].rstrip(_UNITS + _UNITS.lower() + "iIbB")
        unit = unit[1 + len(fraction) :]
    value = _integer(number, 0)
    power = _UNITS.find(unit[:1].upper()) + 1 if unit else 0
    suffix = unit[1:].lower()
    fraction_ok = not fraction or (fraction.isascii() and fraction.isdigit() and power)
    if value is None or not fraction_ok or (unit and (not power or suffix not in ("", "ib", "b"))):
        raise UsageError(f"invalid {what} {text!r}: expected a number of bytes (K, M, ... allowed)")
    scale = (1000 if suffix == "b" else 1024) ** power
    size: int = value * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    if size > 2**63 - 1:
        raise UsageError(f"invalid {what} {text!r}: too large")
    return size
