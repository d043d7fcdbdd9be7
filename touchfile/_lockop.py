"""The lock calls in plain Python: flock(), or fcntl(F_OFD_SETLK[W]) for an
open file description's record lock. The polling fallback tries with them,
and so does the command before the rest of touchfile is imported, which is
why this module imports nothing heavier than fcntl.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

# Added to an op (LOCK_SH, LOCK_EX, LOCK_UN, with LOCK_NB): fcntl()'s open file
# description record lock instead of flock(); the C core's TF_OFD (_native
# checks that they agree).
OFD = 256

# struct flock, for fcntl(F_OFD_SETLK): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK_STRUCT = struct.Struct("hhqqi")


def lock_op(fd: int, op: int, span: tuple[int, int] = (0, 0)) -> None:
    """flock(fd, op), or with OFD in op, the same as fcntl(F_OFD_SETLK[W]) on
    span, (start, length) (length 0: to the end of the file). Raises
    BlockingIOError when busy (with LOCK_NB), or another OSError."""
    if not op & OFD:
        fcntl.flock(fd, op)
        return
    if op & fcntl.LOCK_EX:
        kind = fcntl.F_WRLCK
    else:
        kind = fcntl.F_RDLCK if op & fcntl.LOCK_SH else fcntl.F_UNLCK
    arg = _FLOCK_STRUCT.pack(kind, os.SEEK_SET, span[0], span[1], 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK if op & fcntl.LOCK_NB else fcntl.F_OFD_SETLKW, arg)
    except PermissionError as error:  # EACCES: POSIX lets F_SETLK say "busy" so
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)) from error


def conflicts(fd: int, op: int, span: tuple[int, int]) -> bool:
    """Whether an open file description's record lock (LOCK_SH or LOCK_EX in
    op) on span would conflict with one that another description holds now
    (F_OFD_GETLK, which takes no lock, and needs no write access)."""
    kind = fcntl.F_WRLCK if op & fcntl.LOCK_EX else fcntl.F_RDLCK
    arg = _FLOCK_STRUCT.pack(kind, os.SEEK_SET, span[0], span[1], 0)
    found = _FLOCK_STRUCT.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, arg))
    return bool(found[0] != fcntl.F_UNLCK)
