"""Who holds a lock on a file right now, read from /proc (Linux).

/proc/locks names the process that took each flock() lock. A flock() lock
belongs to an open file description, though, and every process that has the
description open holds it: a command run by ``touchfile LOCK cmd`` inherits
the lock, and keeps it after the process that took it has gone. So, as
lslocks does for its HOLDERS column, holders() also looks through each
process's descriptors for the locked file and reads the locks listed in
/proc/PID/fdinfo/FD, which shows the locks of that very description.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from typing import NamedTuple

from ._kinds import EXCLUSIVE, SHARED, LockType

_PROC = "/proc"


class LockHolder(NamedTuple):
    """A process holding a lock: its pid, the kind of lock, and its command
    line (None when it cannot be read: the process has exited, or belongs to
    another user under a restricted /proc)."""

    pid: int
    kind: LockType
    command: str | None


def holders(path: str | os.PathLike[str], lock_class: str = "FLOCK") -> list[LockHolder]:
    """The processes holding a flock() lock on path now, by pid (lock_class
    "OFDLCK": an open file description's fcntl() lock instead).

    Raises NotImplementedError where this cannot be known (no /proc/locks),
    and OSError if path cannot be stat()ed.
    """
    if not os.path.exists(os.path.join(_PROC, "locks")):
        raise NotImplementedError(
            "who holds a lock cannot be known on this system: /proc/locks is not available"
        )
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open(os.path.join(_PROC, "locks")) as f:
        takers = _parse_locks(f, key, lock_class)
    if not takers:
        return []
    found, unreadable = _scan_descriptors(key, lock_class)
    for pid, kind in takers.items():
        # A taker whose descriptors we could not read (another user's
        # process) is taken at its word; one we could read, and that has
        # no descriptor of the lock, passed it on and holds nothing.
        if pid in unreadable:
            found.setdefault(pid, kind)
    if not found:
        # The takers have exited and whoever inherited the lock is out of
        # our sight: name the takers rather than call the lock free. (An
        # OFD lock's taker is never named: /proc/locks says pid -1.)
        found = {pid: kind for pid, kind in takers.items() if pid > 0}
    return [LockHolder(pid, kind, _command(pid)) for pid, kind in sorted(found.items())]


def _parse_locks(lines: Iterable[str], key: str, lock_class: str) -> dict[int, LockType]:
    """pid -> kind of each granted lock of lock_class (FLOCK, OFDLCK) on key,
    from /proc/locks lines.

    A line reads "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146625 0 EOF";
    waiters show "->" after the number, and are skipped.
    """
    locks: dict[int, LockType] = {}
    for line in lines:
        fields = line.split()
        if fields and fields[0] == "lock:":  # an fdinfo line
            fields = fields[1:]
        if len(fields) < 6 or fields[1] != lock_class or fields[5] != key:
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        locks[pid] = EXCLUSIVE if fields[3] == "WRITE" else SHARED
    return locks


def _scan_descriptors(key: str, lock_class: str) -> tuple[dict[int, LockType], set[int]]:
    """(pid -> kind for every process with a locked description of the file
    open, the pids whose descriptors could not be read).

    Only /proc/PID/fdinfo is read: it lists the locks of each description,
    by device and inode, from the kernel's memory. A stat() of /proc/PID/fd/N
    would ask the descriptor's file system, and block for as long as a hung
    NFS or FUSE mount does.
    """
    found: dict[int, LockType] = {}
    unreadable: set[int] = set()
    marker = f" {key} ".encode()
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        fdinfo = os.path.join(_PROC, entry, "fdinfo")
        try:
            fds = os.listdir(fdinfo)
        except PermissionError:  # another user's process
            unreadable.add(int(entry))
            continue
        except OSError:  # exited
            continue
        for fd in fds:
            try:
                info = _read(os.path.join(fdinfo, fd))
            except OSError:  # closed since
                continue
            if marker in info:  # cheap: most descriptors hold no lock on the file
                locks = _parse_locks(os.fsdecode(info).splitlines(), key, lock_class)
                if locks:
                    found[int(entry)] = next(iter(locks.values()))
    return found, unreadable


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # fdinfo is one seq_file record: a short read is the whole of it.
        chunks = [os.read(fd, 4096)]
        while len(chunks[-1]) == 4096:
            chunks.append(os.read(fd, 4096))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _command(pid: int) -> str | None:
    try:
        with open(os.path.join(_PROC, str(pid), "cmdline"), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    args = [os.fsdecode(arg) for arg in raw.split(b"\0")[:-1]]
    return shlex.join(args) if args else None
