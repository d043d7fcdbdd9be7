"""The only module that touches cffi: touchfile's native core, typed.

Everything here mirrors _native/touchfile.h; see _native/touchfile.c for how
the interrupt works. When the core is not built, AVAILABLE is False and
touchfile polls instead.
"""

from __future__ import annotations

import importlib
import os
import signal
from typing import Any, Callable, Protocol, cast

from ._version import __version__

# Return codes of tf_try() and tf_wait() (negative values are -errno).
OK, BUSY, STALE, INTERRUPTED, DEADLINE, CANCELLED, CLOSED, NO_HANDLER = range(8)

_ALLOWED = "SIGURG, SIGUSR1, SIGUSR2, or SIGRTMIN+N / SIGRTMAX-N"


class _Lib(Protocol):
    def tf_version(self) -> Any: ...
    def tf_set_signal(self, signo: int) -> int: ...
    def tf_handler_ready(self) -> int: ...
    def tf_try(self, fd: int, op: int, path: bytes, dev: int, ino: int) -> int: ...
    def tf_waiter_new(self, timeout: float) -> Any: ...
    def tf_waiter_free(self, waiter: Any) -> None: ...
    def tf_wait(self, w: Any, fd: int, op: int, path: bytes, dev: int, ino: int) -> int: ...
    def tf_cancel(self, w: Any, reason: int) -> None: ...


class _FFI(Protocol):
    NULL: Any

    def gc(self, cdata: Any, destructor: Callable[[Any], None]) -> Any: ...
    def string(self, cdata: Any) -> bytes: ...


def parse_signal(text: str) -> int:
    """The interrupt signal named by TOUCHFILE_SIGNAL ("SIGURG", "SIGRTMIN+3", "23")."""
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
    names = ("OK", "BUSY", "STALE", "INTERRUPTED", "DEADLINE", "CANCELLED", "CLOSED", "NO_HANDLER")
    if [getattr(core.lib, "TF_" + name) for name in names] != list(range(len(names))):
        raise ImportError("touchfile's native core disagrees on its return codes: reinstall")
    built_for = ffi.string(lib.tf_version()).decode()
    if built_for != __version__:
        # A stale build next to new Python code would mix two protocols.
        raise ImportError(
            f"touchfile's native core was built for {built_for}, not {__version__}: "
            "reinstall touchfile (pip install .)"
        )
    return ffi, lib


_loaded = _load()
AVAILABLE = _loaded is not None
SIGNAL = parse_signal(os.environ.get("TOUCHFILE_SIGNAL", "SIGURG"))
if _loaded is not None:
    _ffi, _lib = _loaded
    _lib.tf_set_signal(SIGNAL)
    try_lock: Callable[[int, int, bytes, int, int], int] | None = _lib.tf_try
else:
    try_lock = None


def handler_ready() -> bool:
    """True when the interrupt signal's handler is, or can be made, touchfile's."""
    return _loaded is not None and bool(_lib.tf_handler_ready())


class Waiter:
    """One native wait: blocks in flock() until granted, its deadline, or cancel()."""

    __slots__ = ("_w",)

    def __init__(self, timeout: float) -> None:
        w = _lib.tf_waiter_new(timeout)
        if w == _ffi.NULL:
            raise MemoryError("touchfile: cannot allocate a waiter")
        self._w = _ffi.gc(w, _lib.tf_waiter_free)

    def wait(self, fd: int, op: int, path: bytes, dev: int, ino: int) -> int:
        return _lib.tf_wait(self._w, fd, op, path, dev, ino)

    def cancel(self, reason: int) -> None:
        _lib.tf_cancel(self._w, reason)
