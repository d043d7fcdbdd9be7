"""Lock files in shared directories never become a way into someone else's files
(README: "Security").

The attacker is a real unprivileged user (uid 65534, with setpriv(1)) planting
names in a sticky world-writable directory, and the victim is root, as with a
cron job's lock in /tmp. The kernel's fs.protected_* sysctls are never changed:
touchfile's own checks run before the kernel's, so they are what stops each
attack whatever the sysctls say, and each test says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TOUCHFILE, Holders, hold, probe, program

from touchfile import SHARED, LockError, LockTimeout, TouchFile

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
DESCRIPTORS = str(Path(__file__).with_name("programs") / "descriptors.py")


def _needs(*programs: str) -> None:
    """Skip where root or a program is missing; in CI, fail instead."""
    missing = [p for p in programs if shutil.which(p) is None]
    if os.geteuid() == 0 and not missing:
        return
    why = f"needs root and {', '.join(programs)}"
    if os.environ.get("CI"):
        pytest.fail(f"{why}: .ci/run installs them")
    pytest.skip(why)


def run(argv: list[str], timeout: float = 30, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", **kw)  # type: ignore[call-overload, no-any-return]


def as_nobody(*argv: str) -> None:
    subprocess.run([*AS_NOBODY, *argv], check=True, timeout=30, cwd="/")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A sticky world-writable directory of root's, like /tmp, that uid 65534
    can reach (pytest's tmp_path is private to root)."""
    _needs("setpriv")
    path = Path(tempfile.mkdtemp(prefix="touchfile-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file only root may read or write."""
    path = tmp_path / "victim"
    path.write_text("root:secret\n")
    path.chmod(0o600)
    return path


def _sysctl(name: str) -> int:
    try:
        return int(Path(f"/proc/sys/fs/{name}").read_text())
    except OSError:
        return 0


def _stopped_by_touchfile(error: str, sysctl: str) -> None:
    """touchfile refused (its message says why and where to lock instead);
    the kernel's own check, when on, comes only after ours."""
    assert "refusing" in error, f"not stopped by touchfile ({sysctl}={_sysctl(sysctl)}): {error}"
    assert "sticky world-writable directory" in error
    assert "$XDG_RUNTIME_DIR" in error


# ---- the attacks of the report, through the command -----------------------------


def test_planted_symlink_to_a_secret(shared: Path, victim: Path) -> None:
    """A symlink planted by another user at root's lock path is not followed: the
    command exits 66, saying why, and its unprivileged child never sees the secret."""
    link = shared / "job.lock"
    as_nobody("ln", "-s", str(victim), str(link))
    proc = run([TOUCHFILE, str(link), "--", *AS_NOBODY, "sh", "-c",
                'cat <&3; echo "attacker line" >&3'])  # fmt: skip
    assert proc.returncode == 66
    assert "secret" not in proc.stdout
    assert proc.stderr.count("\n") == 1
    _stopped_by_touchfile(proc.stderr, "protected_symlinks")
    assert victim.read_text() == "root:secret\n"


def test_planted_dangling_symlink(shared: Path, tmp_path: Path) -> None:
    """A dangling symlink planted by another user makes root create nothing."""
    target = tmp_path / "ld.so.preload"
    link = shared / "job2.lock"
    as_nobody("ln", "-s", str(target), str(link))
    proc = run([TOUCHFILE, str(link), "true"])
    assert proc.returncode == 66
    _stopped_by_touchfile(proc.stderr, "protected_symlinks")
    assert not target.exists()


@pytest.mark.parametrize("what", ["file", "fifo"])
def test_planted_file_of_another_user(shared: Path, what: str) -> None:
    """A file or FIFO another user put at the lock path is refused (its owner could
    delete it while it is locked, and two holders would be in at once), where the
    read-only retry used to get around fs.protected_regular."""
    path = shared / "job.lock"
    as_nobody("touch" if what == "file" else "mkfifo", str(path))
    with pytest.raises(PermissionError) as caught:
        TouchFile(path)
    assert caught.value.filename == str(path)
    sysctl = "protected_regular" if what == "file" else "protected_fifos"
    _stopped_by_touchfile(str(caught.value), sysctl)
    proc = run([TOUCHFILE, str(path), "true"])
    assert proc.returncode == 66
    _stopped_by_touchfile(proc.stderr, sysctl)


def test_hard_link_to_a_secret(shared: Path, victim: Path) -> None:
    """A hard link to another file (root's /etc/shadow, say) at the lock path is
    refused: it is root's file, but not a lock file. (Made here by root, since
    fs.protected_hardlinks may stop uid 65534; it is off on many machines.)"""
    if os.stat(victim).st_dev != os.stat(shared).st_dev:
        pytest.skip("the victim and /tmp are on different file systems")
    path = shared / "job.lock"
    os.link(victim, path)
    with pytest.raises(PermissionError) as caught:
        TouchFile(path)
    _stopped_by_touchfile(str(caught.value), "protected_hardlinks")


def test_own_dangling_symlink_creates_nothing(shared: Path, tmp_path: Path) -> None:
    """Nothing is created through a dangling symlink in a shared directory, even
    one of the caller's own or the directory owner's (who may be someone else)."""
    target = tmp_path / "created"
    (shared / "own.lock").symlink_to(target)
    with pytest.raises(PermissionError, match="dangling symlink") as caught:
        TouchFile(shared / "own.lock")
    _stopped_by_touchfile(str(caught.value), "protected_symlinks")
    assert not target.exists()
    target.touch()  # an existing target is locked through the caller's own link
    with TouchFile(shared / "own.lock") as tf, tf.lock(timeout=0):
        assert not probe(target)


def test_symlink_through_a_planted_directory_link(shared: Path, tmp_path: Path) -> None:
    """Every symlink on the way is checked, not just the last one: a directory
    link planted by another user, and a trusted link that leads into a shared
    directory where another user's link waits, are both refused."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    as_nobody("ln", "-s", str(theirs), str(shared / "dir"))
    with pytest.raises(PermissionError, match="to follow"):
        TouchFile(shared / "dir" / "x.lock")
    assert not (theirs / "x.lock").exists()
    as_nobody("ln", "-s", "/etc/passwd", str(shared / "trap.lock"))
    (tmp_path / "mine.lock").symlink_to(shared / "trap.lock")
    with pytest.raises(PermissionError, match="to follow"):
        TouchFile(tmp_path / "mine.lock")


@pytest.mark.parametrize("perms", [0o755, 0o1777])
def test_directory_of_another_user_on_the_way(shared: Path, victim: Path, perms: int) -> None:
    """A directory that another user made in a shared directory (as a root job's
    /tmp/app/lock expects to find its own) is refused, whatever its mode: inside
    it, they decide what every name means."""
    theirs = shared / "app"
    as_nobody("mkdir", "-m", oct(perms)[2:], str(theirs))
    as_nobody("ln", "-s", str(victim), str(theirs / "lock"))
    proc = run([TOUCHFILE, str(theirs / "lock"), "--", *AS_NOBODY, "sh", "-c", "cat <&3"])
    assert proc.returncode == 66
    assert "secret" not in proc.stdout
    _stopped_by_touchfile(proc.stderr, "protected_symlinks")
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        TouchFile(theirs / "new.lock")
    assert not (theirs / "new.lock").exists()


@pytest.mark.parametrize("what", ["content", "fifo"])
def test_root_file_that_is_no_lock_file(shared: Path, what: str) -> None:
    """Even a file of root's own in a shared directory is refused unless it is an
    empty regular file: one with content may be a hard link left behind to an old
    /etc/shadow (nlink 1 once the original was replaced), and a FIFO or device is
    no lock file."""
    path = shared / "job.lock"
    if what == "content":
        path.write_text("root:old-secret\n")
    else:
        os.mkfifo(path)
    with pytest.raises(PermissionError) as caught:
        TouchFile(path)
    _stopped_by_touchfile(str(caught.value), "protected_hardlinks")


def test_temporary_file_through_a_planted_tmpdir(shared: Path, tmp_path: Path) -> None:
    """TouchFile() whose TMPDIR is another user's symlink is refused, and leaves
    no file behind where the link pointed."""
    target = tmp_path / "target"
    target.mkdir()
    as_nobody("ln", "-s", str(target), str(shared / "tmpdir"))
    env = {**os.environ, "TMPDIR": str(shared / "tmpdir")}
    proc = run([sys.executable, program("temporary")], env=env)
    assert proc.returncode == 1 and "PermissionError" in proc.stderr
    _stopped_by_touchfile(proc.stderr, "protected_symlinks")
    assert list(target.iterdir()) == []


def test_replaced_after_a_cleaner_removed_it(shared: Path, victim: Path) -> None:
    """A long-running holder whose lock file a /tmp cleaner removed, and another
    user replaced with a symlink, refuses it at the next acquisition: every
    re-open follows the same rules."""
    path = shared / "d.lock"
    with TouchFile(path) as tf:
        with tf.lock(timeout=0):
            pass
        path.unlink()  # the cleaner
        as_nobody("ln", "-s", str(victim), str(path))
        with pytest.raises(PermissionError, match="to follow"):
            tf.acquire(timeout=1)
        assert not tf.locked()
    assert victim.read_text() == "root:secret\n"


# ---- what keeps working -------------------------------------------------------------


def test_own_files_and_links_in_a_shared_directory(shared: Path) -> None:
    """The caller's own lock file (new or existing), a root-owned one, and the
    caller's own symlink to a file elsewhere all lock as before."""
    with TouchFile(shared / "new.lock") as tf, tf.lock(timeout=0):
        assert not probe(shared / "new.lock")
    elsewhere = shared / "sub"
    elsewhere.mkdir()
    (elsewhere / "target.lock").touch()
    (shared / "link.lock").symlink_to(elsewhere / "target.lock")
    with TouchFile(shared / "link.lock") as tf, tf.lock(timeout=0):
        assert not probe(elsewhere / "target.lock")
    with TouchFile(shared) as tf, tf.lock(timeout=0):  # the shared directory itself
        assert not probe(shared)


def test_symlinks_elsewhere_keep_working(tmp_path: Path) -> None:
    """Outside shared directories symlinks are followed as the kernel follows them:
    a path through a symlinked directory, a relative link with "..", the program's
    own binary (Go's touchfile example), and a dangling link creates its target."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    with TouchFile(tmp_path / "alias" / "x.lock") as tf, tf.lock(timeout=0):
        assert not probe(tmp_path / "real" / "x.lock")
    (tmp_path / "real" / "up.lock").symlink_to("../y.lock")
    with TouchFile(tmp_path / "alias" / "up.lock") as tf, tf.lock(timeout=0):
        assert not probe(tmp_path / "y.lock")
    with TouchFile(sys.executable) as tf, tf.lock(timeout=0):
        assert not probe(os.path.realpath(sys.executable))
    (tmp_path / "dangling.lock").symlink_to("made.lock")
    with TouchFile(tmp_path / "dangling.lock") as tf, tf.lock(timeout=0):
        assert (tmp_path / "made.lock").is_file()


def test_proc_fd_links_are_followed_by_the_kernel(tmp_path: Path) -> None:
    """/proc/self/fd/N and /dev/fd/N name the descriptor's file even when its path
    is gone: the kernel follows these links, and touchfile locks that very file
    (nothing is created at the old path, and no wait goes round for ever)."""
    path = tmp_path / "gone.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        path.unlink()
        for name in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}"):
            with TouchFile(name) as tf, tf.lock(timeout=1):
                assert not probe(name, "shared")
        assert not path.exists()
    finally:
        os.close(fd)


def test_symlink_loop_is_eloop(tmp_path: Path) -> None:
    """A symlink loop is OSError(ELOOP) naming the path, as open() says."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError, match="Too many levels of symbolic links") as caught:
        TouchFile(tmp_path / "a")
    assert caught.value.filename == str(tmp_path / "a")


# ---- read-only descriptors ----------------------------------------------------------


def _access(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def test_lock_files_are_opened_read_only(lock_path: str) -> None:
    """Every descriptor touchfile opens on a lock file is read-only: flock() needs
    no write access."""
    with TouchFile(lock_path) as tf, tf.lock(timeout=0):
        assert _access(tf._fileno()) == os.O_RDONLY


def test_command_inherits_a_read_only_descriptor(lock_path: str, tmp_path: Path) -> None:
    """The command's inherited lock descriptor is read-only, as under flock(1)."""
    report = tmp_path / "fds"
    proc = run([TOUCHFILE, lock_path, sys.executable, DESCRIPTORS, str(report)])
    assert proc.returncode == 0, proc.stderr
    mine = [line.split() for line in report.read_text().splitlines()]
    assert [access for _, access, target in mine if target == lock_path] == ["r"]


# ---- NFS: an exclusive lock needs a descriptor open for writing ------------------------

NFSLIKEFS = Path(__file__).with_name("nfslike") / "nfslikefs.c"


@pytest.fixture(scope="module")
def nfslikefs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """nfslikefs built: a FUSE file system that locks as the NFS client does."""
    _needs("gcc", "pkg-config")
    flags = run(["pkg-config", "--cflags", "--libs", "fuse3"])
    if flags.returncode != 0:
        _needs("libfuse3-dev (pkg-config fuse3)")
    program = str(tmp_path_factory.mktemp("nfslike") / "nfslikefs")
    build = run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", program,
                 str(NFSLIKEFS), *flags.stdout.split()])  # fmt: skip
    assert build.returncode == 0, build.stderr
    return program


@pytest.fixture
def nfs_like(nfslikefs: str, tmp_path: Path) -> Iterator[Path]:
    """A mounted nfslikefs (unmounted at the end)."""
    backing, mount = tmp_path / "backing", tmp_path / "mount"
    backing.mkdir()
    mount.mkdir()
    daemon = subprocess.Popen([nfslikefs, "-f", str(backing), str(mount)])
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mount):
            assert daemon.poll() is None and time.monotonic() < deadline, "did not mount"
            time.sleep(0.01)
        yield mount
    finally:
        daemon.terminate()  # unmounts
        daemon.wait(timeout=10)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_exclusive_lock_on_nfs_reopens_read_write(nfs_like: Path, holders: Holders) -> None:
    """Where flock() is emulated with byte-range locks (NFS), an exclusive lock
    through the read-only descriptor fails with EBADF: touchfile reopens the file
    read-write, as flock(1) does, and the lock excludes as anywhere. Shared locks
    stay read-only."""
    path = nfs_like / "x.lock"
    with TouchFile(path) as tf:
        with tf.lock(SHARED, timeout=0):
            assert _access(tf._fileno()) == os.O_RDONLY
        with tf.lock(timeout=0):
            assert _access(tf._fileno()) == os.O_RDWR
            assert not probe(path, "shared")
        assert probe(path, "shared")
        hold(holders, path)
        with pytest.raises(LockTimeout):
            tf.acquire(timeout=0.05)


def test_exclusive_lock_on_nfs_needs_write_access(nfs_like: Path) -> None:
    """A file the caller may not write is never reopened read-write: on NFS its
    exclusive lock is OSError(EBADF) naming the path; shared locks work."""
    path = nfs_like / "x.lock"
    (nfs_like.parent / "backing" / "x.lock").touch(mode=0o444)
    # Root without capabilities, so that the file's mode applies to it.
    argv = ["setpriv", "--bounding-set=-all", sys.executable, program("nfs_read_only"), str(path)]
    proc = run(argv)
    assert proc.stdout.splitlines() == ["shared", "EBADF True"], proc.stderr


# ---- TouchFile()'s temporary file -------------------------------------------------------


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_temporary_file_is_never_recreated(how: str) -> None:
    """The private file of TouchFile(), once removed or replaced, is never made
    again under its visible name: LockError, for this and every other thread,
    and close() leaves a file put in its place alone."""
    tf = TouchFile()
    with tf.lock(timeout=0):
        pass
    os.unlink(tf.path)
    if how == "replaced":
        Path(tf.path).write_text("someone else's\n")
    with pytest.raises(LockError, match="never re-created"):
        tf.acquire(timeout=1)
    errors: list[BaseException] = []

    def other_thread() -> None:  # needs a descriptor of its own
        try:
            tf.acquire(timeout=1)
        except LockError as error:
            errors.append(error)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and "never re-created" in str(errors[0])
    assert os.path.exists(tf.path) == (how == "replaced")
    tf.close()
    assert os.path.exists(tf.path) == (how == "replaced")
    if how == "replaced":
        assert Path(tf.path).read_text() == "someone else's\n"
        os.unlink(tf.path)


# ---- the command's standard descriptors --------------------------------------------------


@pytest.mark.parametrize("fd", [0, 1, 2])
def test_closed_standard_descriptor_is_dev_null_in_the_command(
    lock_path: str, tmp_path: Path, fd: int
) -> None:
    """A standard descriptor closed when touchfile starts is /dev/null in the
    command, not closed (where a file the command opens next would land)."""
    report = tmp_path / "fds"
    script = f'exec "$@" {fd}>&-'
    proc = run(["sh", "-c", script, "sh", TOUCHFILE, lock_path,
                sys.executable, DESCRIPTORS, str(report)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    targets = {int(line.split()[0]): line.split()[2] for line in report.read_text().splitlines()}
    assert targets[fd] == "/dev/null"


# ---- what the command prints ---------------------------------------------------------------


def test_everything_printed_is_escaped(tmp_path: Path) -> None:
    """Paths and command lines in -v and --holders output are printed with their
    control characters escaped: no escape sequence reaches the terminal."""
    path = str(tmp_path / "evil\x1b[2J\nname.lock")
    program = tmp_path / "ev\x1b[2Jil\necho"
    program.symlink_to(shutil.which("echo") or "/bin/echo")
    proc = run([TOUCHFILE, "-v", path, "--", str(program), "plain"])
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert "\x1b" not in proc.stdout and len(lines) == 3, lines
    assert lines[1] == f"touchfile: executing {tmp_path}/ev\\x1b[2Jil\\necho"
    with TouchFile(path) as tf:  # once -v's wait passes 1 s, stderr names the lock file
        tf.acquire()
        proc = run([TOUCHFILE, "-v", "-w", "1.2", path, "true"])
    assert proc.returncode == 1 and "\x1b" not in proc.stderr
    assert f"to lock {tmp_path}/evil\\x1b[2J\\nname.lock (exclusive)" in proc.stderr
    assert proc.stderr.count("\n") == 2  # that line, and the timeout's
    proc = run([TOUCHFILE, "--holders", path])
    assert proc.returncode == 0
    assert proc.stdout == f"no process holds a lock on {tmp_path}/evil\\x1b[2J\\nname.lock\n"
    proc = run([TOUCHFILE, str(tmp_path / "missing\x1b[2J" / "x"), "true"])
    assert proc.returncode == 66 and "\x1b" not in proc.stderr


# ---- holders() beside a hung mount ------------------------------------------------------


@contextlib.contextmanager
def _hung_mount(tmp_path: Path) -> Iterator[int]:
    """A FUSE mount (bindfs) whose daemon is stopped: any stat() of its files
    blocks until it resumes. Yields a descriptor of a file on it, opened before
    the daemon stopped; always resumed and unmounted."""
    source, mount = tmp_path / "source", tmp_path / "mount"
    source.mkdir()
    mount.mkdir()
    (source / "file").touch()
    daemon = subprocess.Popen(
        ["bindfs", "-f", "-o", "attr_timeout=0,entry_timeout=0", str(source), str(mount)]
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mount):
            assert daemon.poll() is None and time.monotonic() < deadline, "bindfs did not mount"
            time.sleep(0.01)
        # O_PATH: closing it (as every child does at exec) asks nothing of
        # the daemon, while a stat() of it does.
        fd = os.open(mount / "file", os.O_PATH | os.O_CLOEXEC)
        try:
            os.kill(daemon.pid, signal.SIGSTOP)
            yield fd
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
            os.close(fd)
    finally:
        subprocess.run(["umount", str(mount)], timeout=30, check=False)
        daemon.terminate()
        daemon.wait(timeout=10)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_holders_beside_a_hung_mount(lock_path: str, holders: Holders, tmp_path: Path) -> None:
    """holders() (and --holders) answer at once while another process has a file
    open on a hung mount: they read /proc/PID/fdinfo, never stat() a descriptor."""
    _needs("bindfs")
    holder = hold(holders, lock_path)
    with _hung_mount(tmp_path):  # this process has a file open there
        start = time.monotonic()
        proc = run([TOUCHFILE, "--holders", lock_path], timeout=20)
        took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert f"{holder.proc.pid}  exclusive" in proc.stdout
    assert took < 10
