"""Opening a lock file: read-only, and never someone else's file in a shared directory.

Lock files often live in sticky world-writable directories (/tmp, /run/lock),
where anyone may plant a name before the lock's user comes: a symlink to a file
only root may read, a dangling link to a file root must not create, a file or
directory of their own, which they can change while it is locked. The kernel's
fs.protected_symlinks and fs.protected_regular stop some of this when they are
on; touchfile applies stricter rules itself, whatever they say. In a directory
that is sticky and world-writable:

- a symlink is followed only if it belongs to the caller or to the directory's
  owner, and no file is ever created through it;
- a directory on the way must belong to the caller, root or the directory's
  owner (inside another user's directory, they decide what every name means);
- the lock file must belong to the caller, root or the directory's owner, and
  be a directory or an empty regular file with no other hard link (a file with
  content, or with two links, may be a link to a file elsewhere, such as an
  old /etc/shadow, where fs.protected_hardlinks is off).

To apply them to every name on the way, the path's own and those its links
lead to, open_lock_file() walks the path one name at a time, opening each
directory with O_PATH and each name with O_NOFOLLOW, and follows symlinks
itself. The links of /proc (/proc/self/fd/N, /dev/stdin) are not text to
resolve again: the kernel follows those.

Everything is opened read-only unless asked otherwise: flock() needs no write
access, and a command that inherits the descriptor (the touchfile command's)
must not be able to write a file it could not open itself.
"""

from __future__ import annotations

import errno
import os
import stat

# How many symlinks one path may go through, as the kernel's MAXSYMLINKS.
MAX_LINKS = 40

ADVICE = (
    "keep locks in a directory only trusted users can write, such as $XDG_RUNTIME_DIR "
    "or one that root makes under /run/lock"
)

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def open_lock_file(path: str, mode: int, *, writable: bool = False, create: bool = True) -> int:
    """A descriptor of the lock file at path (absolute), opened read-only
    (read-write if writable), creating it with mode if missing and create.

    Raises PermissionError when the rules above refuse the file (saying why),
    and whatever OSError open() raises otherwise, always naming path.
    """
    # O_NONBLOCK: a FIFO opened read-only would wait for a writer for ever;
    # cleared once open (flock() ignores it, a command that inherits the
    # descriptor expects it blocking).
    flags = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = _Walk(path, create).open(flags, mode)
    except OSError as error:
        error.filename = path
        raise
    try:
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def _shared(st: os.stat_result) -> bool:
    """A sticky directory anyone may write to."""
    return st.st_mode & (stat.S_ISVTX | stat.S_IWOTH) == stat.S_ISVTX | stat.S_IWOTH


def _refuse(what: str, directory: str) -> PermissionError:
    return PermissionError(
        errno.EACCES,
        f"refusing {what} in the sticky world-writable directory {directory}; {ADVICE}",
    )


def _check_found(st: os.stat_result, dir_st: os.stat_result, where: str, directory: str) -> None:
    """Refuse what was found at where, in the shared directory (dir_st), unless
    it is the caller's, root's or the directory owner's own lock file or directory."""
    if st.st_uid not in (os.geteuid(), 0, dir_st.st_uid):
        # Its owner may delete or replace it while we hold its lock (and the
        # next locker would lock a new file: two holders at once), or, for a
        # directory, point every name inside it anywhere.
        raise _refuse(f"{where}: it belongs to uid {st.st_uid}", directory)
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(f"{where}: not a regular file or directory", directory)
    if st.st_nlink > 1:
        raise _refuse(f"{where}: a file with {st.st_nlink} hard links", directory)
    if st.st_size > 0:
        raise _refuse(f"{where}: a file with content, not an empty lock file", directory)


_proc_dev: int | None = None


def _on_proc(st: os.stat_result) -> bool:
    """Is st (a directory's) on /proc, whose symlinks are the kernel's to follow?"""
    global _proc_dev
    if _proc_dev is None:
        try:
            _proc_dev = os.stat("/proc").st_dev
        except OSError:
            _proc_dev = -1
    return st.st_dev == _proc_dev


class _Walk:
    """One walk down a path: the directory reached so far, and the names left."""

    __slots__ = ("create", "dangling", "dir_st", "dirfd", "here", "links", "names")

    def __init__(self, path: str, create: bool) -> None:
        self.create = create
        self.names = [name for name in reversed(path.split("/")) if name]  # next last
        self.here = "/"  # the directory's path, as walked (for messages only)
        self.links = 0
        self.dirfd = -1
        self.dir_st: os.stat_result  # the directory's, set with dirfd
        # (link, its directory): a link met last in a shared directory, whose
        # target must not be created.
        self.dangling: tuple[str, str] | None = None

    def open(self, flags: int, mode: int) -> int:
        self._go(os.open("/", _ROOT), "/")
        try:
            if not self.names:  # the path is "/"
                return os.open("/", flags & ~os.O_NOFOLLOW)
            while True:
                name = self.names.pop()
                if self.names:
                    self._enter(name)
                    continue
                fd = self._open_last(name, flags, mode)
                if fd >= 0:
                    return fd
        finally:
            os.close(self.dirfd)

    def _go(self, fd: int, here: str) -> None:
        """Make fd (a directory) the one the walk goes on from."""
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if self.dirfd >= 0:
            os.close(self.dirfd)
        self.dirfd, self.dir_st, self.here = fd, st, here

    def _enter(self, name: str) -> None:
        """Go down into the directory name (following it if it is a symlink)."""
        try:
            fd = os.open(name, _DIR, dir_fd=self.dirfd)
        except NotADirectoryError:  # a symlink (O_NOFOLLOW), or not a directory
            if self._follow(name, -1, 0) < -1:
                raise
            return
        parent, where = self.dir_st, os.path.join(self.here, name)
        self._go(fd, os.path.normpath(where))
        if _shared(parent):
            _check_found(self.dir_st, parent, where, os.path.dirname(where))

    def _open_last(self, name: str, flags: int, mode: int) -> int:
        """The lock file itself; -1 when name was a symlink, now followed."""
        dir_st = self.dir_st
        shared = _shared(dir_st)
        where = os.path.join(self.here, name)
        if shared:
            # Look before opening: opening someone else's device or FIFO may
            # itself do something, and the kernel's own checks (when on) would
            # refuse with a bare EACCES that says nothing of why.
            try:
                st = os.stat(name, dir_fd=self.dirfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                self._follow_link(name, st)
                return -1
            if st is not None:
                _check_found(st, dir_st, where, self.here)
                flags &= ~os.O_CREAT
            elif self.create and not self.dangling:
                flags |= os.O_CREAT | os.O_EXCL  # ours, or we look again
        elif self.create and not self.dangling:
            flags |= os.O_CREAT
        try:
            fd = os.open(name, flags, mode, dir_fd=self.dirfd)
        except IsADirectoryError:  # O_CREAT on a directory, which locks read-only
            fd = os.open(name, flags & ~os.O_CREAT, dir_fd=self.dirfd)
        except FileExistsError:  # created by someone else since we looked: look again
            return self._again(name)
        except FileNotFoundError:
            if not self.dangling or not self.create:
                raise
            raise _refuse(
                f"to create a file through {self.dangling[0]}: a dangling symlink",
                self.dangling[1],
            ) from None
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            # A symlink (O_NOFOLLOW). In a shared directory it was put there
            # since we looked: look again.
            if shared:
                return self._again(name)
            return self._follow(name, flags, mode)
        if shared:
            try:
                _check_found(os.fstat(fd), dir_st, where, self.here)
            except OSError:
                os.close(fd)
                raise
        return fd

    def _again(self, name: str) -> int:
        self._count_link()  # bounded: a name swapped for ever is ELOOP
        self.names.append(name)
        return -1

    def _follow(self, name: str, flags: int, mode: int) -> int:
        """Follow the symlink name in the current directory: -1 when followed,
        -2 when name is no symlink, or, for the last name on /proc, the
        descriptor of what it names (opened with flags)."""
        st = os.stat(name, dir_fd=self.dirfd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            return -2
        if _on_proc(self.dir_st):
            return self._follow_proc(name, flags)
        self._follow_link(name, st)
        return -1

    def _follow_proc(self, name: str, flags: int) -> int:
        """A link of /proc (/proc/self/fd/N, /proc/PID/cwd): its text is no
        path (a deleted file's, a pipe's, another mount namespace's), so the
        kernel follows it, and the walk goes on from where it leads."""
        self._count_link()
        fd = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=self.dirfd)
        if self.names:
            self._go(fd, os.path.join(self.here, name))
            return -1
        try:
            # Opening the O_PATH descriptor's own /proc link opens its file
            # anew, with the access asked for: the one way to do that.
            return os.open(f"/proc/self/fd/{fd}", flags & ~(os.O_CREAT | os.O_NOFOLLOW), 0)
        finally:
            os.close(fd)

    def _follow_link(self, name: str, st: os.stat_result) -> None:
        """Go on from the symlink name (st) in the current directory."""
        dir_st = self.dir_st
        if _shared(dir_st):
            where = os.path.join(self.here, name)
            if st.st_uid not in (os.geteuid(), dir_st.st_uid):
                raise _refuse(f"to follow {where}: a symlink of uid {st.st_uid}", self.here)
            if not self.names and not self.dangling:
                # Its target is created by no one: even a link of the
                # directory's owner must not make us create any file we may.
                self.dangling = (where, self.here)
        self._count_link()
        # In a sticky directory only the link's owner (checked above), the
        # directory's owner or root may replace it, so the target read now is
        # the target of the link just checked.
        target = os.readlink(name, dir_fd=self.dirfd)
        self.names.extend(name for name in reversed(target.split("/")) if name)
        if target.startswith("/"):
            self._go(os.open("/", _ROOT), "/")

    def _count_link(self) -> None:
        self.links += 1
        if self.links > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
