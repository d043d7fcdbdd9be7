"""sigaction(2) through ctypes, for the child programs that look at or change
a signal's handler behind Python's back (Python's signal module shows neither
a C handler nor SA_RESTART)."""

from __future__ import annotations

import ctypes

SA_RESTART = 0x10000000


class Sigaction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def handler_of(sig: int) -> int | None:
    """The address of sig's handler (None for SIG_DFL)."""
    act = Sigaction()
    assert _libc.sigaction(sig, None, ctypes.byref(act)) == 0
    handler: int | None = act.handler
    return handler


def add_sa_restart(sig: int) -> None:
    """Give sig's handler, whatever it is, SA_RESTART."""
    act = Sigaction()
    assert _libc.sigaction(sig, None, ctypes.byref(act)) == 0
    act.flags |= SA_RESTART
    assert _libc.sigaction(sig, ctypes.byref(act), None) == 0
