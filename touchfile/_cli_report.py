"""What the touchfile command says: errors, -v's status, and --holders' table.

Everything printed that touchfile did not write itself (paths, command lines)
goes through printable(), so no escape sequence reaches a terminal.
"""

from __future__ import annotations

import os
import sys

# The command imports this module before the rest of touchfile (see _cli.py).
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Protocol, TextIO

    from ._kinds import LockType
    from ._lock import LockBase

    class Holder(Protocol):
        """A holder as the command shows it: a LockHolder, or a PostgresHolder."""

        @property
        def pid(self) -> int: ...
        @property
        def kind(self) -> LockType: ...
        @property
        def command(self) -> str | None: ...


# How often -v on a terminal looks again for who holds the lock, in seconds.
HOLDERS_EVERY = 2.0

# The name messages begin with: the one touchfile was run as, as flock(1)
# does (a link named flock to touchfile says "flock: ...").
program = "touchfile"


def name_program(argv0: str) -> None:
    global program
    name = os.path.basename(argv0)
    program = "touchfile" if not name or name.endswith(".py") else printable(name)


def say(message: str) -> None:
    """A line on stderr."""
    write(sys.stderr, f"{program}: {printable(message)}\n")


def tell(message: str) -> None:
    """A line on stdout, as flock(1)'s --verbose prints it."""
    write(sys.stdout, f"{program}: {printable(message)}\n")


def write(stream: TextIO | None, text: str) -> None:
    """text on stream, at once; nothing if the stream is gone (closed, None)."""
    if stream is None:  # sys.stderr is None when started without one
        return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # closed, or its reader gone (EPIPE)
        return


def print_holders(path: str, found: list[Holder]) -> None:
    """--holders' table on stdout (or the line that says there are none)."""
    if not found:
        print(f"no process holds a lock on {printable(path)}")
        return
    width = max(len("PID"), *(len(str(h.pid)) for h in found))
    print(f"{'PID':<{width}}  {'KIND':<9}  COMMAND")
    for h in found:
        print(f"{h.pid:<{width}}  {h.kind.value:<9}  {printable(h.command)}")


def holders_or_none(lk: LockBase) -> list[Holder] | None:
    from ._errors import LockError

    try:
        found: list[Holder] = lk._locks.backend.holders()
    except (NotImplementedError, OSError, LockError):
        return None
    return found


class Status:
    """What -v says on stderr: one line per event, or, on a terminal, one
    status line kept up to date while waiting."""

    def __init__(self, stream: TextIO, path: str, kind: LockType) -> None:
        self.stream = stream
        self.path = path
        self.kind = kind
        self.tty = stream.isatty()
        self.showing = False

    def waiting(self, elapsed: float, found: list[Holder] | None) -> None:
        path = printable(self.path)
        if not self.tty:  # one line per event: all of it
            if found is None:
                who = "; who holds it cannot be known here"
            elif not found:
                who = ""
            elif len(found) == 1:
                who = f", held by {_describe(found[0])}"
            else:
                who = f", held by {len(found)} processes: " + "; ".join(map(_describe, found))
            text = f"{program}: waiting {elapsed:.1f} s to lock {path} ({self.kind.value}){who}"
            self._write(text + "\n")
            return
        # One line kept up to date, cut to the terminal's width: who holds the
        # lock comes first (the pids, then what the path and commands add).
        if found is None:
            who = "who holds it cannot be known here"
        elif not found:
            who = "held by nobody now"
        elif len(found) == 1:
            who = f"held by pid {found[0].pid} ({found[0].kind.value})"
        elif len({h.kind for h in found}) == 1:  # shared, or one description's
            pids = ", ".join(str(h.pid) for h in found)
            who = f"held by {len(found)} processes ({found[0].kind.value}): {pids}"
        else:
            pids = ", ".join(f"{h.pid} ({h.kind.value})" for h in found)
            who = f"held by {len(found)} processes: {pids}"
        commands = "".join(f"; {h.pid}: {printable(h.command)}" for h in found or ())
        text = f"{program}: waiting {elapsed:.1f} s, {who}, to lock {path} ({self.kind.value})"
        text += commands
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80
        except OSError:
            width = 80
        if len(text) > width - 1:
            text = text[: max(width - 4, 20)] + "..."
        self._write("\r\x1b[K" + text)
        self.showing = True

    def end(self, message: str) -> None:
        if self.showing:
            self._write("\r\x1b[K")
            self.showing = False
        if message:
            self._write(f"{program}: {printable(message)}\n")

    def _write(self, text: str) -> None:
        write(self.stream, text)


def _describe(holder: Holder) -> str:
    return f"pid {holder.pid} ({holder.kind.value}): {printable(holder.command)}"


def printable(text: str | None) -> str:
    """Text fit for one line of a terminal: control characters (newlines,
    escape sequences) are shown escaped, never sent as they are. Everything
    touchfile prints that it did not write itself (paths, command lines) goes
    through here."""
    if text is None:
        return "?"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
