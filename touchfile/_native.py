"""The only module that touches cffi: touchfile's native core, typed.

Everything here mirrors _native/touchfile.h; see _native/touchfile.c for how
the interrupt works. Return codes become an Outcome here (a negative one,
-errno, an OSError), so nothing above this module sees a bare int. When the
core is not built, AVAILABLE is False and touchfile polls instead.
"""

from __future__ import annotations

import enum
import importlib
import math
import os
import signal
from typing import Any, Callable, Protocol, cast

from ._lockop import OFD
from ._version import __version__


class Outcome(enum.IntEnum):
    """What a try or a wait came to: the core's TF_* codes (checked at load)."""

    OK = 0  # the lock is held, and the path still names the locked file
    BUSY = 1  # a try: held elsewhere
    STALE = 2  # locked, but the path names another file now: unlocked again
    INTERRUPTED = 3  # a signal not ours: run Python's handlers, then go on
    DEADLINE = 4  # the wait's deadline passed
    CANCELLED = 5  # the wait was cancelled (its context)
    CLOSED = 6  # the wait was cancelled (its TouchFile was closed)
    NO_HANDLER = 7  # the interrupt signal is someone else's: poll instead


_OUTCOMES = tuple(Outcome)  # by value, for the hot path

_ALLOWED = "SIGURG, SIGUSR1, SIGUSR2, or SIGRTMIN+N / SIGRTMAX-N"


class _Lib(Protocol):
    def tf_version(self) -> Any: ...
    def tf_set_signal(self, signo: int) -> int: ...
    def tf_handler_ready(self) -> int: ...
    def tf_try(self, fd: int, op: int, path: bytes | None, dev: int, ino: int) -> int: ...
    def tf_try_range(
        self, fd: int, op: int, start: int, len: int, path: bytes | None, dev: int, ino: int
    ) -> int: ...
    def tf_waiter_size(self) -> int: ...
    def tf_waiter_init(self, waiter: Any, deadline: float) -> None: ...
    def tf_wait(
        self, w: Any, fd: int, op: int, start: int, len: int, path: bytes | None, dev: int, ino: int
    ) -> int: ...
    def tf_cancel(self, w: Any, reason: int) -> None: ...
    def tf_set_test_delay(self, ns: int) -> None: ...

    TF_OFD: int


class _FFI(Protocol):
    NULL: Any

    def new(self, ctype: str, init: int) -> Any: ...
    def cast(self, ctype: str, cdata: Any) -> Any: ...
    def string(self, cdata: Any) -> bytes: ...


def parse_signal(text: str) -> int:
    """The interrupt signal named by TOUCHFILE_SIGNAL ("SIGURG", "SIGRTMIN+3", "23").

    Raises ValueError for anything but a signal touchfile can use.
    """
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
    else:
        name = name if name.startswith("SIG") else "SIG" + name
        base, sign, offset = name.partition("+") if "+" in name else name.partition("-")
        try:
            number = int(getattr(signal, base))
            if sign:
                number = number + int(offset) if sign == "+" else number - int(offset)
        except (AttributeError, ValueError):
            raise ValueError(f"TOUCHFILE_SIGNAL={text!r} is not a signal; use {_ALLOWED}") from None
    realtime = range(int(signal.SIGRTMIN), int(signal.SIGRTMAX) + 1)
    if number not in (signal.SIGURG, signal.SIGUSR1, signal.SIGUSR2) and number not in realtime:
        raise ValueError(f"TOUCHFILE_SIGNAL={text!r} cannot be used; use {_ALLOWED}")
    return number


def _load() -> tuple[_FFI, _Lib] | None:
    try:
        core = importlib.import_module("touchfile._core")
    except ImportError:
        return None
    ffi, lib = cast(_FFI, core.ffi), cast(_Lib, core.lib)
    built_for = ffi.string(lib.tf_version()).decode()
    if built_for != __version__:
        # A stale build next to new Python code would mix two protocols.
        raise ImportError(
            f"touchfile's native core was built for {built_for}, not {__version__}: "
            "reinstall touchfile (pip install .)"
        )
    if lib.TF_OFD != OFD or any(
        getattr(lib, "TF_" + outcome.name) != outcome for outcome in Outcome
    ):
        raise ImportError("touchfile's native core disagrees on its return codes: reinstall")
    return ffi, lib


_loaded = _load()
AVAILABLE = _loaded is not None
if _loaded is not None:
    _ffi, _lib = _loaded
    # tf_try() itself, for every acquisition's path (a Python wrapper would
    # cost a call): one flock(fd, op | LOCK_NB), then the check that path still
    # names (dev, ino). Its code is Outcome.OK when the lock is taken; any
    # other goes through outcome().
    try_lock: Callable[[int, int, bytes | None, int, int], int] = _lib.tf_try
    _WAITER_WORDS = -(-_lib.tf_waiter_size() // 8)  # int64_t's

# The interrupt signal, once use_signal() has chosen it (SIGURG until then).
SIGNAL = int(signal.SIGURG)


def use_signal(signo: int) -> None:
    """Make signo the interrupt signal (before the first wait)."""
    global SIGNAL
    SIGNAL = signo
    if _loaded is not None:
        _lib.tf_set_signal(signo)


def handler_ready() -> bool:
    """True when the interrupt signal's handler is, or can be made, touchfile's."""
    return _loaded is not None and bool(_lib.tf_handler_ready())


def try_range(
    fd: int, op: int, start: int, length: int, path: bytes | None, dev: int, ino: int
) -> int:
    """tf_try_range(): try_lock() on length bytes from start (length 0: to
    the end), and with path None, a bare descriptor (no path to check)."""
    cpath = _ffi.NULL if path is None else path
    return _lib.tf_try_range(fd, op, start, length, cpath, dev, ino)


def _errno(rc: int, path: bytes | None) -> OSError:
    return OSError(-rc, os.strerror(-rc), None if path is None else os.fsdecode(path))


def outcome(rc: int, path: bytes | None) -> Outcome:
    """A code of the core's as an Outcome; a negative one (-errno) raises
    OSError naming path (if any)."""
    if rc < 0:
        raise _errno(rc, path)
    return _OUTCOMES[rc]


class Waiter:
    """One native wait: blocks in flock() until granted, its deadline, or cancel()."""

    __slots__ = ("_memory", "_w")

    def __init__(self, deadline: float) -> None:
        """deadline: absolute, on time.monotonic()'s clock (CLOCK_MONOTONIC on
        Linux, as the core's); math.inf for none."""
        # Python's memory (zeroed, freed with this object): the end of a wait,
        # granted or not, makes no call into C to free it.
        self._memory = _ffi.new("int64_t[]", _WAITER_WORDS)
        self._w = _ffi.cast("tf_waiter *", self._memory)
        _lib.tf_waiter_init(self._w, -1.0 if deadline == math.inf else deadline)

    def wait(
        self, fd: int, op: int, span: tuple[int, int], path: bytes | None, dev: int, ino: int
    ) -> Outcome:
        """OK, STALE, INTERRUPTED, NO_HANDLER, or the reason the wait ended;
        span is (start, len) of an OFD lock's range. Raises OSError for any
        other error."""
        start, length = span
        cpath = _ffi.NULL if path is None else path
        rc = _lib.tf_wait(self._w, fd, op, start, length, cpath, dev, ino)
        if rc >= 0:  # outcome(), inline: this is every wait's way out
            return _OUTCOMES[rc]
        raise _errno(rc, path)

    def cancel(self, reason: Outcome) -> None:
        """End the wait with reason, now or when it starts (the first reason wins)."""
        _lib.tf_cancel(self._w, reason)
