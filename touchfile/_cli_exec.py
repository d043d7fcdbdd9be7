"""The touchfile command once it holds its lock: the command run (and
supervised until it exits, passing the stop signals on) or exec'd in place
with -F, and the exit status.

Lean on purpose, as _cli.py is: when the first try took a free lock, this is
all of touchfile that the command imports (run_granted()), so that it costs
little more than Python's own start. A lock that had to be waited for comes
here from _cli_run.py, through start_command() and supervise().
"""

from __future__ import annotations

import errno
import os
import sys
import time

from ._cli import EX_OSERR, EX_UNAVAILABLE, _Exit, _Stopped
from ._cli_args import Args
from ._cli_report import say, tell

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if not TYPE_CHECKING:
    try:  # signal.py is _signal's functions with enums over them, and enum
        import _signal as signal  # takes 4 ms to import: a third of the start-up
    except ImportError:  # an interpreter without it
        import signal
else:
    import signal
    from collections.abc import Callable, Iterable
    from typing import Any, Protocol

    class Lost(Protocol):
        """Whether a held lock was lost (a PostgreSQL lock's session ended)."""

        fired: bool


# si_code of a signal the kernel itself sent: the terminal's Ctrl-C, Ctrl-\
# and hangup, which went to the whole foreground process group.
SI_KERNEL = 0x80

# The signals that end a wait (exit 128+N), and that are passed on to the
# command while it runs.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What the main thread waits for while the command runs: those, and the
# command's end (and, for a lock that can be lost, SIGALRM: _cli_run's _Lost).
WATCHED = frozenset({*STOP_SIGNALS, signal.SIGCHLD})

# Signals Python ignores, which the command gets with their default action.
# (glibc's posix_spawn() leaves its own internal signals 32 and 33 ignored
# in the command; Python cannot name them to reset them.)
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def run_granted(args: Args, fd: int, start: float) -> int:
    """The command line whose first try (at start) took the lock on fd, a
    descriptor of the lock file that the path still names: run the command
    holding it. Returns the exit status, or raises _cli's _Exit or _Stopped."""
    ignored = catch_stop_signals()
    try:
        pid = start_command(args, None if args.close else fd, WATCHED, ignored, start)
    except BaseException:
        os.close(fd)  # the lock with it: nothing ran
        raise
    assert pid is not None  # (a lock file's command line has a command)
    wait_status = supervise(pid, WATCHED, ignored)
    if args.close:
        os.close(fd)
    # Otherwise touchfile exits without unlocking, as flock(1) does: the
    # command shares the locked description, and whatever it left running
    # with the descriptor (a daemon, say) still holds the lock.
    return exit_status(wait_status)


def catch_stop_signals() -> set[int]:
    """Until the command runs, a stop signal raises _Stopped. Signals ignored
    when touchfile started (as under nohup) stay ignored; returns them. With
    SIGCHLD ignored the kernel would reap the command itself, and its status
    would be lost: it gets its default action (flock(1) resets it too)."""

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
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return ignored


def start_command(
    args: Args, inherit: int | None, watched: Iterable[int], ignored: set[int], start: float
) -> int | None:
    """Granted (the wait began at start): the command's pid once it runs,
    with inherit (the lock's descriptor) inherited; None for FD alone, which
    runs nothing. Raises _Exit."""
    try:
        waited = time.monotonic() - start
        # From here on the stop signals wait blocked, for sigwaitinfo() to
        # take them and pass them on; the handler of one that came before
        # runs at the latest with the next call, and still ends everything.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
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
        raise _Exit(128 + stop.signum, signum=stop.signum) from None
    except _CannotRun as cannot:
        error = cannot.error
        code = EX_OSERR if error.errno == errno.ENOMEM else EX_UNAVAILABLE
        raise _Exit(code, f"failed to execute {args.argv[0]}: {error.strerror}") from None


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
    try:  # noqa: SIM105  (contextlib is not imported on this path)
        sys.stdout.flush()
    except (OSError, ValueError):  # stdout gone: nothing to lose
        pass

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


def supervise(
    pid: int,
    watched: Iterable[int],
    ignored: set[int],
    lost: Lost | None = None,
    keep_running: bool = False,
    name: str = "",
) -> int:
    """Wait for the command, passing the stop signals on, and ending it if
    the lock (name) is lost; returns its wait status."""
    told = False
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo in ignored:
            continue  # ignored when touchfile started: the command ignores it too
        if info.si_signo == signal.SIGALRM:
            if lost is not None and lost.fired and not told:
                told = True
                then = "leaving it running" if keep_running else "sending it SIGTERM"
                say(f"lost the lock on {name} while the command ran; {then}")
                if not keep_running:
                    _send(pid, signal.SIGTERM)
            continue
        if info.si_signo != signal.SIGCHLD:
            # A signal the kernel sent to the foreground process group
            # (Ctrl-C at the terminal) reached the command already: sending
            # it again would make it see two.
            if info.si_code != SI_KERNEL:
                _send(pid, info.si_signo)  # exited: SIGCHLD is coming
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status


def _send(pid: int, signum: int) -> None:
    try:  # noqa: SIM105  (as above)
        os.kill(pid, signum)
    except ProcessLookupError:  # exited already: SIGCHLD is coming
        pass


def exit_status(wait_status: int) -> int:
    """touchfile's exit status for the command's wait status: the command's
    own, or 128+N if it died of signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code
