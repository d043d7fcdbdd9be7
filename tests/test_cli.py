"""The touchfile command, side by side with util-linux flock(1) on the same files."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TOUCHFILE, Holders, hold, probe, program, wait_until

import touchfile
from touchfile import EXCLUSIVE, SHARED, TouchFile, _cli
from touchfile._cli_args import parse

FLOCK = shutil.which("flock")
needs_flock = pytest.mark.skipif(FLOCK is None, reason="util-linux flock(1) is not installed")

# A command that says "ready", counts the signal given as argv[1], and 0.3 s
# after the first one exits with status 10 + the count.


def run(argv: list[str], cwd: Path | str = "/", **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; all are killed and reaped at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def start(procs: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd="/",
    )  # fmt: skip
    procs.append(proc)
    return proc


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A lock file L, a directory D, a dangling symlink S, and files to execute."""
    (tmp_path / "L").touch()
    (tmp_path / "D").mkdir()
    (tmp_path / "S").symlink_to("target")
    (tmp_path / "plain").write_text("not a program\n")
    (tmp_path / "script").write_text('exit "$1"\n')  # runs with sh, as execvp() runs it
    (tmp_path / "script").chmod(0o755)
    return tmp_path


# ---- the same exit status as flock(1) ------------------------------------

SAME_AS_FLOCK = [
    (["L", "true"], 0),
    (["L", "sh", "-c", "exit 3"], 3),
    (["L", "-c", "exit 3"], 3),
    (["L", "--command", "exit 3"], 3),
    (["L", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
    (["-s", "L", "true"], 0),
    (["-x", "L", "true"], 0),
    (["-e", "L", "true"], 0),
    (["-w", "0", "L", "true"], 0),
    (["-w", "2.5", "L", "true"], 0),
    (["--timeout=2.5", "L", "true"], 0),
    (["-n", "-E", "7", "L", "true"], 0),
    (["D", "true"], 0),
    (["S", "true"], 0),
    (["missing/L", "true"], 66),
    (["L", "no-such-command-touchfile"], 69),
    (["L", "./plain"], 69),
    (["L", ""], 69),
    (["L", "./script", "5"], 5),
    ([], 64),
    (["L"], 64),
    (["-q", "L", "true"], 64),
    (["--bogus", "L", "true"], 64),
    (["-w", "abc", "L", "true"], 64),
    (["-w"], 64),
    (["-E", "256", "L", "true"], 64),
    (["-E", "x", "L", "true"], 64),
    (["L", "-c", "exit 3", "extra"], 64),
    (["L", "-c"], 64),
]


@needs_flock
@pytest.mark.parametrize(("args", "status"), SAME_AS_FLOCK, ids=lambda v: repr(v))
def test_exit_status_matches_flock(workdir: Path, args: list[str], status: int) -> None:
    """Each invocation exits as util-linux flock(1) does with the same arguments."""
    theirs = run([str(FLOCK), *args], cwd=workdir)
    ours = run([TOUCHFILE, *args], cwd=workdir)
    assert theirs.returncode == status, theirs.stderr
    assert ours.returncode == status, ours.stderr
    assert "Traceback" not in ours.stderr
    assert len(ours.stderr.splitlines()) <= 1, ours.stderr
    if status in (64, 66, 69):
        assert ours.stderr.startswith("touchfile: "), ours.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-w", "-1", "L", "true"],
        ["-w", "nan", "L", "true"],
        ["-E", "-1", "L", "true"],
        ["-E", "1_0", "L", "true"],
        ["--holders"],
        ["--holders", "L", "true"],
        ["-c", "true", "L", "true"],
        ["-c", "true", "L", "-c", "true"],
        ["-x"],
        ["--", "L"],
    ],
    ids=lambda v: repr(v),
)
def test_bad_command_line_is_one_line_and_64(workdir: Path, args: list[str]) -> None:
    """Usage errors: one line on stderr, status 64, nothing run, no traceback."""
    proc = run([TOUCHFILE, *args], cwd=workdir)
    assert proc.returncode == 64
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("touchfile: ")


def test_double_dash_before_the_command(workdir: Path) -> None:
    """``LOCKFILE -- COMMAND`` runs COMMAND, even one that looks like an option."""
    proc = run([TOUCHFILE, "L", "--", "sh", "-c", "echo $0", "-c"], cwd=workdir)
    assert (proc.returncode, proc.stdout) == (0, "-c\n")
    proc = run([TOUCHFILE, "--", "L", "echo", "-n", "x"], cwd=workdir)
    assert (proc.returncode, proc.stdout) == (0, "x")


def test_unusable_lock_file_permission_denied(workdir: Path) -> None:
    """A lock file the user may not open or create: one line, status 66."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to drop the capability to override permissions")
    private = workdir / "private"
    private.mkdir(mode=0o700)
    os.chown(private, 65534, 65534)  # nobody's; root without capabilities may not enter
    proc = run(["setpriv", "--bounding-set=-all", TOUCHFILE, str(private / "L"), "true"])
    assert proc.returncode == 66
    assert proc.stderr == f"touchfile: cannot open lock file {private / 'L'}: Permission denied\n"


@pytest.mark.parametrize("name,value", [("TOUCHFILE_NATIVE", "maybe"),
                                        ("TOUCHFILE_SIGNAL", "SIGKILL")])  # fmt: skip
def test_bad_environment_is_a_clear_error(workdir: Path, name: str, value: str) -> None:
    """A bad TOUCHFILE_NATIVE or TOUCHFILE_SIGNAL: one line, status 78, nothing run
    (not a traceback and status 1, the busy status)."""
    env = {**os.environ, name: value}
    proc = run([TOUCHFILE, "L", "echo", "ran"], cwd=workdir, env=env)
    assert (proc.returncode, proc.stdout) == (78, "")
    assert proc.stderr.startswith(f"touchfile: {name}={value!r}") or proc.stderr.startswith(
        f"touchfile: {name} must be"
    )
    assert proc.stderr.count("\n") == 1


def test_empty_lock_file_name(tmp_path: Path) -> None:
    """An empty LOCKFILE cannot be opened, as with flock(1): one line, status 66,
    nothing run (it used to lock the current directory)."""
    proc = run([TOUCHFILE, "", "echo", "ran"], cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (66, "")
    assert proc.stderr == "touchfile: cannot open lock file : No such file or directory\n"


def test_lock_file_created_never_truncated(tmp_path: Path) -> None:
    """A missing lock file is created; an existing one keeps its contents."""
    path = tmp_path / "new.lock"
    assert run([TOUCHFILE, str(path), "true"]).returncode == 0
    assert path.exists()
    path.write_text("keep me")
    assert run([TOUCHFILE, str(path), "true"]).returncode == 0
    assert path.read_text() == "keep me"


def test_command_keeps_stdio(lock_path: str) -> None:
    """The command reads touchfile's stdin and writes to its stdout and stderr."""
    proc = run([TOUCHFILE, lock_path, "-c", "cat; echo err >&2"], input="piped\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "piped\n", "err\n")


@pytest.mark.parametrize(("native", "mode"), [("", "(native waits)"),
                         ("0", "(polling waits: TOUCHFILE_NATIVE=0)")])  # fmt: skip
def test_version_says_how_waits_are_made(native: str, mode: str) -> None:
    """--version: the version, and whether waits are native (as CI builds it) or
    poll (TOUCHFILE_NATIVE=0; without the native core: tests/test_install.py)."""
    proc = run([TOUCHFILE, "--version"], env={**os.environ, "TOUCHFILE_NATIVE": native})
    assert proc.stdout == f"touchfile {touchfile.__version__} {mode}\n"


def test_python_m_touchfile_is_the_command(lock_path: str) -> None:
    """``python -m touchfile`` is the same command as the console script."""
    script = run([TOUCHFILE, "--version"])
    module = run([sys.executable, "-m", "touchfile", "--version"])
    assert script.stdout == module.stdout and script.stdout.startswith("touchfile ")
    proc = run([sys.executable, "-m", "touchfile", lock_path, "-c", "exit 5"])
    assert proc.returncode == 5


def test_help_shows_examples() -> None:
    """--help explains the statuses and shows examples."""
    proc = run([TOUCHFILE, "--help"])
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "touchfile -n " in proc.stdout
    assert "--holders" in proc.stdout and "Exit status" in proc.stdout


# ---- exclusion against flock(1), in both directions -----------------------

KINDS = {"exclusive": "-x", "shared": "-s"}


@pytest.mark.usefixtures("mode")  # waits: native and polling
@needs_flock
@pytest.mark.parametrize("held", ["exclusive", "shared"])
@pytest.mark.parametrize("wanted", ["exclusive", "shared"])
@pytest.mark.parametrize(("holder", "taker"), [("flock", TOUCHFILE), ("cli", "flock")])
def test_conflicts_with_flock_both_ways(
    lock_path: str, holders: Holders, holder: str, taker: str, held: str, wanted: str
) -> None:
    """touchfile's command and flock(1) exclude each other (shared locks share)."""
    hold(holders, lock_path, held, holder)
    proc = run([taker, KINDS[wanted], "-n", "-E", "9", lock_path, "true"])
    assert proc.returncode == (0 if held == wanted == "shared" else 9), proc.stderr
    assert proc.stderr == ""  # a conflict is not an error: nothing is printed


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["--shared", "--nonblock"], 0),
        (["-sn"], 0),
        (["--exclusive", "--nb"], 9),
        (["-xn"], 9),
        (["--wait", "0.2"], 9),
        (["--timeout=0.2"], 9),
        (["-w0.2"], 9),
        (["-nw", "5"], 9),
        (["-nE9"], 9),
        (["--conflict-exit-code=9", "-n"], 9),
    ],
    ids=lambda v: repr(v),
)
def test_option_spellings(lock_path: str, holders: Holders, args: list[str], status: int) -> None:
    """Long options, --opt=value, and clustered short options mean what the short ones do."""
    hold(holders, lock_path, "shared")
    proc = run([TOUCHFILE, "-E", "9", *args, lock_path, "true"])
    assert (proc.returncode, proc.stderr) == (status, "")


def test_long_close_and_verbose(lock_path: str) -> None:
    """--close and --verbose are -o and -v; -v says what flock(1)'s says, on stdout."""
    proc = run([TOUCHFILE, "--close", "--verbose", lock_path, "ls", "-l", "/proc/self/fd/"])
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"touchfile: getting lock took 0\.\d{6} seconds", lines[0])
    assert lines[1] == "touchfile: executing ls"
    assert lock_path not in proc.stdout  # not inherited
    inherited = run([TOUCHFILE, lock_path, "ls", "-l", "/proc/self/fd/"])
    assert lock_path in inherited.stdout


@pytest.mark.usefixtures("mode")  # waits: native and polling
@needs_flock
def test_waits_for_flock_holder_then_runs(
    lock_path: str, holders: Holders, procs: list[subprocess.Popen[str]]
) -> None:
    """Without -n the command waits while flock(1) holds the lock, and runs once it is free."""
    holder = hold(holders, lock_path, "exclusive", "flock")
    waiter = start(procs, [TOUCHFILE, lock_path, "-c", "echo ran"])
    time.sleep(0.5)
    assert waiter.poll() is None
    holder.release()
    out, err = waiter.communicate(timeout=10)
    assert (waiter.returncode, out, err) == (0, "ran\n", "")


@pytest.mark.usefixtures("mode")  # waits: native and polling
@needs_flock
def test_deadline_expires_against_flock(lock_path: str, holders: Holders) -> None:
    """-w SECONDS gives up with the conflict status once SECONDS have passed, not before."""
    hold(holders, lock_path, "exclusive", "flock")
    t0 = time.monotonic()
    proc = run([TOUCHFILE, "-w", "0.5", "-E", "3", lock_path, "echo", "ran"])
    elapsed = time.monotonic() - t0
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    assert 0.5 <= elapsed < 2.5


def test_command_holds_the_lock(lock_path: str) -> None:
    """While the command runs, nobody else can take the lock; afterwards anyone can."""
    inner = f"{TOUCHFILE} -n {lock_path} true"  # a second taker, inside the command
    assert run([TOUCHFILE, lock_path, "-c", inner]).returncode == 1
    assert run([TOUCHFILE, lock_path, "-c", inner.replace("-n", "-s -n")]).returncode == 1
    assert run([TOUCHFILE, "-s", lock_path, "-c", inner]).returncode == 1
    assert run([TOUCHFILE, "-s", lock_path, "-c", inner.replace("-n", "-s -n")]).returncode == 0
    assert probe(lock_path)


# ---- the lock's inheritance ------------------------------------------------


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_command_keeps_lock_when_touchfile_is_killed(
    lock_path: str, procs: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL of touchfile leaves the lock with the command until it exits."""
    proc = start(procs, [TOUCHFILE, lock_path, "-c", "echo locked; read x; echo done"])
    assert read_line(proc) == "locked"
    proc.kill()
    proc.wait(timeout=10)
    assert not probe(lock_path)  # the command holds it still
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    wait_until(lambda: probe(lock_path))


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_close_option_command_does_not_inherit(
    lock_path: str, procs: list[subprocess.Popen[str]]
) -> None:
    """With -o, SIGKILL of touchfile frees the lock while the command still runs."""
    proc = start(procs, [TOUCHFILE, "-o", lock_path, "-c", "echo locked; read x"])
    assert read_line(proc) == "locked"
    assert not probe(lock_path)
    proc.kill()
    proc.wait(timeout=10)
    wait_until(lambda: probe(lock_path))


@pytest.mark.usefixtures("mode")  # waits: native and polling
@needs_flock
@pytest.mark.parametrize("tool", ["flock", TOUCHFILE])
def test_background_child_keeps_lock_like_flock(lock_path: str, tool: str) -> None:
    """A daemon left running by the command holds the lock on, as with flock(1); -o not."""
    for close, still_held in ((False, True), (True, False)):
        opts = ["-o"] if close else []
        child = "sleep 3 >/dev/null 2>&1 & echo $!"
        proc = run([tool, *opts, lock_path, "-c", child])
        pid = int(proc.stdout)
        try:
            assert probe(lock_path) is not still_held
        finally:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: probe(lock_path))


# ---- signals ------------------------------------------------------------------


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_ends_the_wait_and_nothing_runs(
    lock_path: str, holders: Holders, procs: list[subprocess.Popen[str]], signum: int
) -> None:
    """SIGINT/SIGTERM/SIGHUP while waiting: touchfile dies of it at once, as flock(1)
    does (a parent's waitpid() sees the signal); the command never runs."""
    hold(holders, lock_path)
    marker = Path(lock_path + ".ran")
    proc = start(procs, [TOUCHFILE, lock_path, "touch", str(marker)])
    time.sleep(0.3)  # waiting by now
    t0 = time.monotonic()
    proc.send_signal(signum)
    proc.wait(timeout=10)
    assert time.monotonic() - t0 < 0.5
    assert proc.returncode == -signum
    assert not marker.exists()
    assert proc.stderr is not None and proc.stderr.read() == ""


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_ignored_hangup_stays_ignored(
    lock_path: str, holders: Holders, procs: list[subprocess.Popen[str]]
) -> None:
    """Started with SIGHUP ignored (nohup), touchfile keeps waiting through a SIGHUP."""
    holder = hold(holders, lock_path)
    proc = start(procs, ["sh", "-c", f"trap '' HUP; exec {TOUCHFILE} {lock_path} echo ran"])
    time.sleep(0.3)
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert proc.poll() is None
    holder.release()
    assert proc.communicate(timeout=10)[0] == "ran\n"


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_is_passed_on_to_the_command(
    lock_path: str, procs: list[subprocess.Popen[str]], signum: int
) -> None:
    """A signal sent to touchfile while the command runs reaches the command once;
    touchfile exits with the command's status."""
    proc = start(procs, [TOUCHFILE, lock_path, sys.executable, program("counter"), str(signum)])
    assert read_line(proc) == "ready"
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == 11  # the command saw exactly one


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_command_killed_by_signal_gives_128_plus_n(
    lock_path: str, procs: list[subprocess.Popen[str]]
) -> None:
    """A command killed by a signal it does not handle: touchfile exits 128+N."""
    proc = start(procs, [TOUCHFILE, lock_path, "-c", "echo ready; exec sleep 10"])
    assert read_line(proc) == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM


def _on_terminal(argv: list[str], columns: int = 250) -> tuple[subprocess.Popen[bytes], int]:
    """Run argv as the session leader of a new pseudo-terminal; (process, master fd)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        proc = subprocess.Popen(
            ["setsid", "--ctty", *argv], stdin=slave, stdout=slave, stderr=slave, cwd="/"
        )
    finally:
        os.close(slave)
    return proc, master


def _read_until(master: int, needle: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    end = time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([master], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            raise AssertionError(f"{needle!r} never came; got {seen!r}")
        try:
            seen += os.read(master, 4096)
        except OSError:  # EIO: the terminal's last user has gone
            raise AssertionError(f"{needle!r} never came; got {seen!r}") from None
    return seen


def test_ctrl_c_at_terminal_reaches_command_once(lock_path: str) -> None:
    """Ctrl-C at a terminal goes to touchfile and the command; it is not sent twice."""
    proc, master = _on_terminal(
        [TOUCHFILE, lock_path, sys.executable, program("counter"), str(int(signal.SIGINT))]
    )
    try:
        _read_until(master, b"ready")
        os.write(master, b"\x03")
        assert proc.wait(timeout=10) == 11  # one SIGINT, not two
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_verbose_keeps_a_status_line_on_a_terminal(lock_path: str, holders: Holders) -> None:
    """-v on a terminal: one status line, rewritten while waiting, then cleared."""
    holder = hold(holders, lock_path)
    proc, master = _on_terminal([TOUCHFILE, "-v", lock_path, "echo", "ran"])
    try:
        seen = _read_until(master, b"waiting 1.5 s")
        holder.release()
        seen += _read_until(master, b"ran")
        assert seen.count(b"\r\x1b[Ktouchfile: waiting ") >= 2
        assert f"held by pid {holder.proc.pid} (exclusive)".encode() in seen
        assert b"\r\x1b[Ktouchfile: getting lock took " in seen
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)


def test_verbose_status_fits_an_80_column_terminal(tmp_path: Path, holders: Holders) -> None:
    """On an 80-column terminal with a long lock file path, the status line still
    shows the holders' pids (they come first), and is cut to fit the width."""
    deep = tmp_path / ("long-directory-name-" * 4)
    deep.mkdir()
    lock_path = str(deep / "the.lock")
    one = hold(holders, lock_path, "shared")
    two = hold(holders, lock_path, "shared")
    proc, master = _on_terminal([TOUCHFILE, "-v", lock_path, "echo", "ran"], columns=80)
    try:
        seen = _read_until(master, b"waiting 1.")
        seen += _read_until(master, b"\r\x1b[K")  # the whole line
        line = seen.split(b"\r\x1b[K")[-2].decode()
        assert len(line) <= 79, line
        first, second = sorted((one.proc.pid, two.proc.pid))  # as holders are listed
        assert f"held by 2 processes (shared): {first}, {second}," in line
        assert line.endswith("...")
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


# ---- who holds it ---------------------------------------------------------


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_verbose_says_who_holds_it(lock_path: str, holders: Holders) -> None:
    """-v (not a terminal): once the wait passes 1 s, stderr names the holder."""
    holder = hold(holders, lock_path, "shared")
    t0 = time.monotonic()
    proc = run([TOUCHFILE, "-v", "-w", "1.3", lock_path, "true"])
    assert proc.returncode == 1 and time.monotonic() - t0 >= 1.3
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"touchfile: waiting 1.0 s to lock {lock_path} (exclusive), held by")
    assert f"pid {holder.proc.pid} (shared): {sys.executable} {program('holder_fcntl')}" in lines[0]
    assert lines[1] == "touchfile: timeout while waiting to get lock"  # as flock(1) says it


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_quiet_without_verbose(lock_path: str, holders: Holders) -> None:
    """Without -v, a wait over 1 s prints nothing."""
    holder = hold(holders, lock_path)
    proc = subprocess.Popen(
        [TOUCHFILE, lock_path, "true"], stderr=subprocess.PIPE, text=True, cwd="/"
    )
    time.sleep(1.3)
    holder.release()
    _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")


@pytest.mark.usefixtures("mode")  # waits: native and polling
@needs_flock
def test_holders_lists_flock_and_its_command(lock_path: str, holders: Holders) -> None:
    """--holders and TouchFile.holders() name flock(1) and the command that inherited its lock."""
    holder = hold(holders, lock_path, "exclusive", "flock")
    with TouchFile(lock_path) as tf:
        found = tf.holders()
    pids = [h.pid for h in found]
    assert holder.proc.pid in pids and len(found) == 2  # flock(1) and its sh
    assert {h.kind for h in found} == {EXCLUSIVE}
    commands = {h.pid: h.command for h in found}
    assert commands[holder.proc.pid] == f"flock -x {lock_path} sh -c 'echo locked; read x'"
    proc = run([TOUCHFILE, "--holders", lock_path])
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["PID", "KIND", "COMMAND"]
    assert any(line.split()[:3] == [str(holder.proc.pid), "exclusive", "flock"] for line in lines)


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_holders_of_shared_locks_and_of_none(lock_path: str, holders: Holders) -> None:
    """Every shared holder is listed; a free lock has no holders."""
    with TouchFile(lock_path) as tf:
        assert tf.holders() == []
        assert run([TOUCHFILE, "--holders", lock_path]).stdout == (
            f"no process holds a lock on {lock_path}\n"
        )
        started = [hold(holders, lock_path, "shared") for _ in range(3)]
        found = tf.holders()
        assert [(h.pid, h.kind) for h in found] == sorted((p.proc.pid, SHARED) for p in started)
        with tf.lock(SHARED):
            assert os.getpid() in [h.pid for h in tf.holders()]


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_holders_after_the_taker_died(lock_path: str, procs: list[subprocess.Popen[str]]) -> None:
    """When touchfile is killed, the holder shown is the command that inherited the lock."""
    proc = start(procs, [TOUCHFILE, lock_path, "-c", "echo locked; read x"])
    assert read_line(proc) == "locked"
    with TouchFile(lock_path) as tf:
        assert proc.pid in [h.pid for h in tf.holders()]
        proc.kill()
        proc.wait(timeout=10)
        found = tf.holders()
    assert len(found) == 1 and found[0].pid != proc.pid
    shell = os.environ.get("SHELL") or "/bin/sh"  # -c runs $SHELL, as flock(1) does
    assert found[0].command == f"{shell} -c 'echo locked; read x'"


def test_holders_of_missing_file(tmp_path: Path) -> None:
    """--holders on a missing file: one line, status 66, and the file is not created."""
    path = tmp_path / "nope"
    proc = run([TOUCHFILE, "--holders", str(path)])
    assert proc.returncode == 66
    assert proc.stderr == f"touchfile: cannot read lock file {path}: No such file or directory\n"
    assert not path.exists()


def test_holders_unknowable_without_proc(lock_path: str) -> None:
    """Without /proc/locks, --holders says plainly that it cannot be known (status 69)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount namespace")
    probe_ns = run(["unshare", "--mount", "true"])
    if probe_ns.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe_ns.stderr.strip()}")
    proc = run(
        ["unshare", "--mount", "sh", "-c",
         f'mount -t tmpfs none /proc && exec "$0" --holders {lock_path}', TOUCHFILE]
    )  # fmt: skip
    assert proc.returncode == 69, proc.stderr
    assert proc.stderr == (
        "touchfile: who holds a lock cannot be known on this system: /proc/locks is not available\n"
    )


# ---- the command's surroundings -------------------------------------------


@needs_flock
def test_command_starts_as_under_flock(tmp_path: Path) -> None:
    """The command's ignored and blocked signals, and a new lock file's mode
    (0666 less the umask), are those flock(1) gives."""
    status = "grep -E '^Sig(Ign|Blk)' /proc/self/status"
    theirs = run(["sh", "-c", f'umask 0; {FLOCK} {tmp_path / "A"} sh -c "{status}"'])
    ours = run(["sh", "-c", f'umask 0; {TOUCHFILE} {tmp_path / "B"} sh -c "{status}"'])
    assert ours.returncode == theirs.returncode == 0
    # glibc's posix_spawn() leaves its internal signals (32 up to SIGRTMIN) ignored.
    internal = sum(1 << (n - 1) for n in range(32, signal.SIGRTMIN))

    def masks(out: str) -> dict[str, int]:
        found = dict(line.split(":") for line in out.splitlines())
        return {name: int(value, 16) & ~internal for name, value in found.items()}

    assert masks(ours.stdout) == masks(theirs.stdout)
    assert set(masks(ours.stdout)) == {"SigIgn", "SigBlk"}
    assert (tmp_path / "A").stat().st_mode == (tmp_path / "B").stat().st_mode == 0o100666


def test_ignored_sigchld_does_not_hang(lock_path: str) -> None:
    """Started with SIGCHLD ignored, touchfile still learns the command's status."""
    proc = run([sys.executable, program("sigchld_ignored"), TOUCHFILE, lock_path, "-c", "exit 7"])
    assert proc.returncode == 7


def test_closed_stdout_never_becomes_the_lock_file(lock_path: str) -> None:
    """With stdout closed, the command's output does not land in the lock file."""
    proc = run(["sh", "-c", f"{TOUCHFILE} {lock_path} echo hello >&-"])
    assert proc.returncode in (0, 1)  # echo may fail to write, as under flock(1)
    assert os.path.getsize(lock_path) == 0


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_ignored_hangup_is_not_passed_on(
    lock_path: str, procs: list[subprocess.Popen[str]]
) -> None:
    """A signal ignored when touchfile started is not passed on to the command."""
    command = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGHUP, lambda *a: print('got SIGHUP', flush=True)); "
        "print('ready', flush=True); time.sleep(0.5)"
    )
    proc = start(
        procs,
        [
            "sh",
            "-c",
            f"trap '' HUP; exec {TOUCHFILE} {lock_path} {sys.executable} -c \"{command}\"",
        ],
    )
    assert read_line(proc) == "ready"
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (0, "")


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_repeated_stop_signals_print_no_traceback(
    lock_path: str, holders: Holders, procs: list[subprocess.Popen[str]]
) -> None:
    """Two stop signals in quick succession while waiting: dies of one, no traceback."""
    hold(holders, lock_path)
    for _ in range(10):
        proc = start(procs, [TOUCHFILE, "-w", "5", lock_path, "true"])
        time.sleep(0.15)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode in (-signal.SIGTERM, -signal.SIGINT), err
        assert err == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_as_handlers_are_put_in_place(lock_path: str, signum: int) -> None:
    """A stop signal that lands just as touchfile puts its handlers in place: dies of
    it, no traceback (the signal is sent from inside, at that very moment)."""
    proc = run(
        [sys.executable, program("stop_as_handlers_go_in"), str(int(signum)), lock_path, "true"]
    )
    assert (proc.returncode, proc.stderr) == (-signum, "")


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_stop_signal_after_grant_before_command(lock_path: str, tmp_path: Path) -> None:
    """A stop signal that arrives after the lock is taken but before the command
    starts: the command never runs (touchfile is held up writing -v's output here),
    and touchfile dies of the signal."""
    marker = tmp_path / "ran"
    Path(lock_path).touch()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:  # fill the pipe, so that touchfile's first write to stdout blocks
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    proc = subprocess.Popen(
        [TOUCHFILE, "-v", lock_path, "touch", str(marker)], stdout=write_end, cwd="/"
    )
    os.close(write_end)
    try:
        wait_until(lambda: not probe(lock_path))  # granted; blocked on its stdout
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        with os.fdopen(read_end, "rb") as pipe:
            out = pipe.read()  # unblocks it
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not marker.exists()
    assert b"touchfile: getting lock took" in out


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_holders_omits_a_taker_that_passed_the_lock_on(
    lock_path: str, procs: list[subprocess.Popen[str]]
) -> None:
    """A process that took the lock, passed it to a child and closed its copy holds
    nothing; the child is the holder."""
    taker = start(procs, [sys.executable, program("pass_on"), lock_path])
    child = int(read_line(taker))
    with TouchFile(lock_path) as tf:
        found = tf.holders()
    assert [(h.pid, h.command) for h in found] == [(child, "sleep 30")]


# ---- the first try -------------------------------------------------------------------


def test_first_try_imports_nothing_heavy() -> None:
    """The command's entry point tries the lock before the rest of touchfile (and
    typing, threading, enum, cffi) is imported: a free lock is taken as soon as
    Python is up."""
    code = (
        "import sys, touchfile._cli\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('touchfile')"
        " or m in ('typing', 'threading', 'enum', '_cffi_backend', 're'))))"
    )
    proc = run([sys.executable, "-c", code])
    assert proc.stdout.split() == [
        "touchfile", "touchfile._cli", "touchfile._cli_args", "touchfile._cli_report",
        "touchfile._lockop", "touchfile._open", "touchfile._version",
    ]  # fmt: skip


@pytest.mark.parametrize("busy", [False, True])
def test_a_free_lock_runs_the_command_with_nothing_heavy(
    lock_path: str, holders: Holders, busy: bool
) -> None:
    """A lock the first try took runs its command with no more of touchfile than
    _cli_exec (not typing, threading, enum, cffi or re); a busy one goes through
    the whole library, which waits (here, -n: it gives up at once)."""
    if busy:
        hold(holders, lock_path)
    code = (
        "import sys\nfrom touchfile import _cli\n"
        f"status = _cli.main(['-n', {lock_path!r}, 'true'])\n"
        "print(status, ' '.join(sorted(m for m in sys.modules if m.startswith('touchfile')"
        " or m in ('typing', 'threading', 'enum', '_cffi_backend', 're'))))"
    )
    proc = run([sys.executable, "-c", code])
    status, *modules = proc.stdout.split()
    lean = [
        "touchfile", "touchfile._cli", "touchfile._cli_args", "touchfile._cli_exec",
        "touchfile._cli_report", "touchfile._lockop", "touchfile._open", "touchfile._version",
    ]  # fmt: skip
    if busy:
        assert status == "1"
        assert {"touchfile._cli_run", "touchfile._lock", "typing", "threading"} <= set(modules)
    else:
        assert (status, modules) == ("0", lean)


@pytest.mark.parametrize("env", ["", "TOUCHFILE_NATIVE", "TOUCHFILE_SIGNAL"])
def test_a_free_lock_runs_at_once_only_on_the_file_the_path_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    """The first try's lock runs the command at once only if the path still
    names the locked file (replaced meanwhile, the whole library reopens it),
    and no TOUCHFILE_* variable is set (the whole library checks them)."""
    path = tmp_path / "L"
    path.touch()
    args = parse([str(path), "true"])
    fd = os.open(path, os.O_RDONLY)
    try:
        if env:
            monkeypatch.setenv(env, "1")
        assert _cli._runs_at_once(args, fd) is not bool(env)
        monkeypatch.delenv(env, raising=False)
        (tmp_path / "new").touch()
        os.rename(tmp_path / "new", path)
        assert _cli._runs_at_once(args, fd) is False
    finally:
        os.close(fd)


@pytest.mark.usefixtures("mode")  # waits: native and polling
@pytest.mark.parametrize(("method", "tool"), [("", "fcntl"), ("--fcntl", "lockf")])
def test_first_try_descriptor_is_the_lock(
    lock_path: str, holders: Holders, method: str, tool: str
) -> None:
    """The descriptor of the first try (busy here) is the one the lock then
    waits on and keeps: touchfile has one descriptor of the lock file, not two."""
    holder = hold(holders, lock_path, tool=tool)
    args = [*([method] if method else []), lock_path, "sh", "-c", "ls -l /proc/$PPID/fd/"]
    proc = subprocess.Popen([TOUCHFILE, *args], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # tried, and waiting
    holder.release()
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.count(lock_path) == 1, out
