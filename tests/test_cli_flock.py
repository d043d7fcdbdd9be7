"""The command as a drop-in for util-linux flock(1): each feature is run with
touchfile and with the system's flock(1) (where that has it), and both must
give the same result. The first test is util-linux's own flock tests
(tests/ts/flock/*), written as ours; tests/util_linux_flock.sh runs the
originals, given a util-linux source tree."""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TOUCHFILE, Holders, hold, program, wait_until

FLOCK = shutil.which("flock")


@functools.cache
def flock_accepts(*options: str) -> bool:
    """Does the system's flock(1) take these options (on a free lock)?"""
    if FLOCK is None:
        return False
    with open(os.devnull) as null:
        proc = subprocess.run(
            [FLOCK, "-n", *options, "/tmp", "true"], stdin=null, capture_output=True, timeout=30
        )
    return proc.returncode != 64


@pytest.fixture(params=["touchfile", "flock"])
def tool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The command under test, as a link named after it (messages begin with
    its name, as flock(1)'s do): touchfile, then the system's flock(1)."""
    if request.param == "flock" and FLOCK is None:
        pytest.skip("util-linux flock(1) is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    target = TOUCHFILE if request.param == "touchfile" else FLOCK
    assert target is not None
    (bin_dir / request.param).symlink_to(target)
    yield str(bin_dir / request.param)


def needs(tool: str, *options: str) -> None:
    """Skip the system flock(1)'s run of a test of a feature it lacks."""
    if tool.endswith("/flock") and not flock_accepts(*options):
        version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
        pytest.skip(f"{version.strip()} lacks {' '.join(options)}")


def sh(script: str, tool: str, lock: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script with $T the command and $L the lock file."""
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(lock).parent,
        env={**os.environ, "T": tool, "L": lock, **env},
    )


def name(tool: str) -> str:
    return os.path.basename(tool)


# ---- util-linux's own cases ---------------------------------------------------------


@pytest.mark.parametrize("api", ["flock", "fcntl"])
def test_util_linux_flock_cases(tool: str, api: str, lock_path: str) -> None:
    """tests/ts/flock/flock: beside a shared lock held by the command itself (run
    in the background), non-block, no-fork, shared, exclusive, the FD form,
    fcntl-vs-flock, and a timeout that outlasts the holder."""
    api_arg = "--fcntl" if api == "fcntl" else ""
    if api == "fcntl":
        needs(tool, "--fcntl")
    script = f"""
    $T {api_arg} --shared "$L" bash -c 'echo Locking; sleep 1.5; echo Unlocking' &
    pid=$!
    timeout 5s bash -c "while ! pgrep -P $pid >/dev/null; do sleep 0.05; done" || exit 99
    one() {{ $T $1 "$L" echo "$2"; echo "rc=$?"; }}
    one "{api_arg} --nonblocking --conflict-exit-code 123" never
    one "{api_arg} --no-fork --nonblocking --conflict-exit-code 123" never
    one "{api_arg} --shared" "Have shared lock"
    one "{api_arg} --nb --exclusive --conflict-exit-code 123" never
    exec 4<>"$L"
    $T {api_arg} --nonblocking --exclusive --conflict-exit-code 123 4; echo "fd rc=$?"
    [ -e 4 ] && echo "fd file should not exist"
    exec 4<&-
    {'one "--nonblock --exclusive" "flock vs fcntl"' if api == "fcntl" else ""}
    start=$(date +%s%N)
    one "{api_arg} --timeout 5 --conflict-exit-code 5" "After timeout."
    end=$(date +%s%N)
    wait $pid
    echo "waited $(( (end - start) / 1000000 ))"
    """
    proc = sh(script, tool, lock_path)
    lines = proc.stdout.splitlines()
    waited = int(lines.pop().split()[1]) / 1000
    expected = ["Locking", "rc=123", "rc=123", "Have shared lock", "rc=0", "rc=123", "fd rc=123"]
    if api == "fcntl":
        expected += ["flock vs fcntl", "rc=0"]
    expected += ["Unlocking", "After timeout.", "rc=0"]
    assert (lines, proc.stderr) == (expected, ""), proc.stderr
    assert 0.5 < waited < 5  # the timeout case waited for the holder, then ran


def test_util_linux_close_case(tool: str, lock_path: str) -> None:
    """tests/ts/flock/close: with --close the command does not have --fd's
    descriptor (an inner lock on it: "NAME: 10: Bad file descriptor", status
    65); without, the inner lock on the same description is granted."""
    needs(tool, "--fd", "0", "--close")
    script = """
    exec 10<>"$L"
    $T --exclusive --close --fd 10 --command "$T --exclusive --nonblock --fd 10 true"
    echo "exit code: $?"
    $T --exclusive --fd 10 --command "$T --exclusive --nonblock --fd 10 true"
    echo "exit code: $?"
    """
    proc = sh(script, tool, lock_path)
    assert proc.stdout == "exit code: 65\nexit code: 0\n"
    assert proc.stderr == f"{name(tool)}: 10: Bad file descriptor\n"


def test_util_linux_unlock_case(tool: str, lock_path: str) -> None:
    """tests/ts/flock/unlock: lock a descriptor (FD form, --verbose), unlock it
    with --unlock, and take the lock with --wait 0 (= --nonblock)."""
    script = """
    exec 10<>"$L"
    $T --exclusive --nonblock --verbose 10
    $T --unlock 10
    $T --exclusive --wait 0 --verbose "$L" true
    """
    proc = sh(script, tool, lock_path)
    took = rf"{name(tool)}: getting lock took \d+\.\d{{6}} seconds"
    assert re.fullmatch(rf"{took}\n{took}\n{name(tool)}: executing true\n", proc.stdout)
    assert proc.stderr == ""


def test_util_linux_range_lock_case(tool: str, tmp_path: Path) -> None:
    """tests/ts/flock/range-lock: --shared --fcntl --start 1 --length 2 --no-fork
    on a directory, "." (read-only): the command, exec'd in the command's place,
    holds an OFD read lock on bytes 1 to 2."""
    needs(tool, "--fcntl", "--start", "1", "--length", "2")
    proc = subprocess.Popen(
        [tool, "--shared", "--fcntl", "--start", "1", "--length", "2", "--no-fork", ".",
         "-c", "cat"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        # Not forked: the command's pid becomes the shell's (then cat's, where the
        # shell execs its last command; Debian's dash forks it).
        wait_until(lambda: _exec_done(proc), timeout=10)
        assert _ofd_locks(proc.pid) == ["READ 1 2"]
    finally:
        out, err = proc.communicate("", timeout=10)
    assert (proc.returncode, out, err) == (0, "", "")


def _exec_done(proc: subprocess.Popen[str]) -> bool:
    """Has proc exec'd past the Python that runs the command? (An early exit
    is an error, told with what it printed.)"""
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"exited {proc.returncode}: {out!r} {err!r}")
    return not Path(f"/proc/{proc.pid}/exe").resolve().name.startswith("python")


def _blocked_on(path: str) -> bool:
    """Is a process blocked in the kernel waiting for a lock on path's file?
    (/proc/locks shows a waiter as "N: -> FLOCK ...")."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any("->" in line and f" {key} " in line for line in f)


def _ofd_locks(pid: int) -> list[str]:
    """The OFD locks of pid's descriptors: ["READ 1 2", ...]."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
        for fd in fds:
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["lock:"] and fields[2] == "OFDLCK":
                    found.append(" ".join((fields[4], fields[7], fields[8])))
    except OSError:
        pass
    return found


# ---- each feature, against flock(1) --------------------------------------------------


def test_fd_form_locks_the_shells_descriptor(tool: str, lock_path: str) -> None:
    """exec 9>FILE; CMD -n 9: the lock stays with the shell's descriptor after
    the command exits (another description is refused), until -u 9."""
    script = """
    exec 9>"$L"
    $T -n 9; echo "lock $?"
    $T -n -E 7 "$L" true; echo "other $?"
    $T -n 9; echo "again $?"
    $T -u 9; echo "unlock $?"
    $T -n -E 7 "$L" true; echo "after $?"
    $T -s 9; echo "shared $?"
    $T -s -n -E 7 "$L" true; echo "beside $?"
    """
    proc = sh(script, tool, lock_path)
    assert proc.stdout.split("\n") == [
        "lock 0", "other 7", "again 0", "unlock 0", "after 0", "shared 0", "beside 0", ""
    ]  # fmt: skip
    assert proc.stderr == ""


@pytest.mark.parametrize(("fd_arg", "status"), [("12", 65), ("x", 64)])
def test_fd_form_bad_descriptor(tool: str, lock_path: str, fd_arg: str, status: int) -> None:
    """A descriptor that is not open: status 65 ("NAME: 12: Bad file
    descriptor"); one that is not a number: a usage error (64)."""
    proc = sh(f"$T -n {fd_arg}", tool, lock_path)
    assert proc.returncode == status
    if status == 65:
        assert proc.stderr == f"{name(tool)}: 12: Bad file descriptor\n"


def test_fd_option_wraps_a_command(tool: str, lock_path: str) -> None:
    """--fd FD COMMAND: the command runs holding the lock on FD's description."""
    needs(tool, "--fd", "0")
    script = """
    exec 9>"$L"
    $T --fd 9 bash -c '$T -n -E 7 "$L" true; echo "other $?"; $T -n --fd 9 true; echo "same $?"'
    $T -n -E 7 "$L" true; echo "still $?"
    """
    proc = sh(script, tool, lock_path)
    assert (proc.stdout, proc.stderr) == ("other 7\nsame 0\nstill 7\n", "")


def test_unlock_on_a_file_runs_the_command(tool: str, lock_path: str) -> None:
    """-u on LOCKFILE unlocks a description nobody locked: it creates the file
    and runs the command, holding nothing."""
    proc = sh('$T -u "$L" bash -c \'$T -n -E 7 "$L" echo free\'', tool, lock_path)
    assert (proc.returncode, proc.stdout) == (0, "free\n")
    assert Path(lock_path).exists()


def test_no_fork_execs_the_command(tool: str, lock_path: str) -> None:
    """-F: the command runs in the command's own process (same pid), holding the
    lock; -F with -o is a usage error."""
    script = """
    $T -F "$L" bash -c 'echo "pid $$"; $T -n -E 7 "$L" true; echo "busy $?"' &
    echo "started $!"
    wait $!
    $T -F -o "$L" true; echo "with -o $?"
    """
    proc = sh(script, tool, lock_path)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[1] == lines[1].split()[1]  # started PID == pid PID
    assert lines[2:] == ["busy 7", "with -o 64"]


@pytest.mark.parametrize("no_fork", [[], ["-F"]])
def test_exec_failure(tool: str, lock_path: str, no_fork: list[str]) -> None:
    """A command that cannot be run, forked or not: status 69, one line naming it."""
    proc = sh(f'$T {" ".join(no_fork)} "$L" /nonexistent/program', tool, lock_path)
    assert proc.returncode == 69
    assert proc.stderr.startswith(f"{name(tool)}: failed to execute /nonexistent/program: ")


def test_lock_error_is_not_an_exec_failure(tool: str, tmp_path: Path) -> None:
    """A lock that cannot be taken on a file that is also the command (flock -en
    "$0" "$0", here a directory with --fcntl, whose F_WRLCK fails) is a lock
    error, 65 "NAME: reason", never "failed to execute" (69)."""
    needs(tool, "--fcntl")
    directory = tmp_path / "d"
    directory.mkdir()
    proc = sh(f'$T --fcntl d "{directory}"', tool, str(tmp_path / "unused"))
    assert (proc.returncode, proc.stderr) == (65, f"{name(tool)}: d: Is a directory\n")


def test_fcntl_exclusive_needs_a_writable_file(tool: str, tmp_path: Path) -> None:
    """--fcntl -x on a file the user cannot write: the lock file cannot be opened
    (66), as flock(1) opens it for writing; -s works (root without the
    capability to override permissions, here)."""
    needs(tool, "--fcntl")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to drop the capability to override permissions")
    locked = tmp_path / "ro.lock"
    locked.touch(0o444)

    def unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["setpriv", "--bounding-set=-all", tool, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")

    proc = unprivileged("--fcntl", str(locked), "true")
    assert (proc.returncode, proc.stderr) == (
        66, f"{name(tool)}: cannot open lock file {locked}: Permission denied\n"
    )  # fmt: skip
    assert unprivileged("--fcntl", "-s", str(locked), "true").returncode == 0


def test_failed_conversion_keeps_the_callers_lock(tool: str, lock_path: str) -> None:
    """FD's shared fcntl lock, which a failed -x -n cannot convert (another shared
    holder): the caller still holds its shared lock afterwards."""
    needs(tool, "--fcntl")
    script = """
    exec 9<>"$L"
    $T --fcntl -s 9
    $T --fcntl -s "$L" sleep 1 &
    sleep 0.3
    $T --fcntl -x -n 9; echo "convert $?"
    wait
    $T --fcntl -x -n -E 7 "$L" true; echo "after $?"
    """
    proc = sh(script, tool, lock_path)
    assert (proc.stdout, proc.stderr) == ("convert 1\nafter 7\n", "")


@pytest.mark.parametrize("holder_tool", ["lockf", "fasteners"])
def test_fcntl_excludes_record_locks(
    tool: str, lock_path: str, holders: Holders, holder_tool: str
) -> None:
    """--fcntl: an OFD lock, so a lockf() or fasteners holder makes it wait (here:
    -n gives the conflict status), and a flock() holder does not."""
    needs(tool, "--fcntl")
    holder = hold(holders, lock_path, tool=holder_tool)
    proc = sh(
        '$T --fcntl -n -E 7 "$L" true; echo "fcntl $?"; $T -n "$L" echo flock', tool, lock_path
    )
    assert proc.stdout == "fcntl 7\nflock\n"
    holder.release()
    proc = sh('$T --fcntl -n "$L" echo free', tool, lock_path)
    assert proc.stdout == "free\n"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--fcntl"], "WRITE 0 EOF"),
        (["--fcntl", "-s"], "READ 0 EOF"),
        (["--start", "10"], "WRITE 10 EOF"),
        (["--length", "5", "-s"], "READ 0 4"),
        (["--start", "1K", "--length", "1KB"], "WRITE 1024 2023"),
    ],
)
def test_fcntl_ranges(tool: str, lock_path: str, options: list[str], expected: str) -> None:
    """--fcntl locks the whole file; --start and --length a byte range (and imply
    --fcntl), with flock(1)'s size units."""
    needs(tool, *options)
    script = f'$T {" ".join(options)} "$L" bash -c \'echo "$$"; read x\''
    proc = subprocess.Popen(
        ["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "T": tool, "L": lock_path},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert _ofd_locks(pid) == [expected]
    finally:
        proc.communicate("\n", timeout=10)


@pytest.mark.parametrize("value", ["x", "-1", "1Q"])
def test_bad_range(tool: str, lock_path: str, value: str) -> None:
    """A --start that is not a size is a usage error."""
    needs(tool, "--start", "0")
    assert sh(f'$T --start {value} "$L" true', tool, lock_path).returncode == 64


@pytest.mark.parametrize(
    ("spelling", "status"),
    [
        (["--nonblocking"], 7),
        (["--nonblock"], 7),
        (["--nonb"], 7),
        (["--nb"], 7),
        (["--excl", "-n"], 7),
        (["--sh", "-n"], 0),
        (["--timeo=0"], 7),
        (["--timeout", "0"], 7),
        (["--wait=0.1"], 7),
        (["--n"], 64),  # ambiguous: --nb, --nonblocking, --no-fork
        (["--no"], 64),  # ambiguous: --nonblocking, --no-fork
        (["--bogus"], 64),
        (["--shared=1"], 64),  # takes no value
        (["--conf"], 64),  # needs one: takes the lock file, then wants a number
    ],
)
def test_option_spellings(
    tool: str, lock_path: str, holders: Holders, spelling: list[str], status: int
) -> None:
    """Long options abbreviate to any unambiguous prefix, as getopt_long() allows;
    an ambiguous or unknown one is a usage error (64)."""
    errors = ("--n", "--no", "--bogus", "--shared=1", "--conf")  # 64 in every version
    needs(tool, *[s for s in spelling if s not in errors])
    hold(holders, lock_path, "shared")
    proc = sh(f'$T -E 7 {" ".join(spelling)} "$L" true', tool, lock_path)
    assert proc.returncode == status, proc.stderr
    if status == 64:  # one line saying what is wrong (flock(1) adds a second, a hint)
        assert re.search("ambiguous|unrecognized|argument|invalid", proc.stderr.splitlines()[0])


@pytest.mark.parametrize("option", ["-w", "--timeout", "-E", "--fd"])
def test_missing_value(tool: str, option: str) -> None:
    """An option that needs a value, last on the line: a usage error (64)."""
    if option == "--fd":
        needs(tool, "--fd", "0")
    proc = subprocess.run([tool, option], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64 and "requires an argument" in proc.stderr


@pytest.mark.parametrize("first", ["-h", "--help", "-V", "--version"])
def test_help_and_version_act_at_once(tool: str, first: str) -> None:
    """--help and --version act when read, whatever follows (status 0)."""
    proc = subprocess.run([tool, first, "--bogus", "-w"], capture_output=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [("010", "8"), ("0x10", "16"), ("+5", "5"), (" 5", "5"), ("1.5K", "1536"),
     ("1KiB", "1024"), ("2KB", "2000")],
)  # fmt: skip
def test_start_is_read_as_flock_reads_it(
    tool: str, tmp_path: Path, value: str, expected: str
) -> None:
    """--start OFFSET as flock(1) reads sizes: octal, hexadecimal, a sign, units."""
    needs(tool, "--start", "0")
    proc = subprocess.Popen(
        [tool, "-s", "--start", value, str(tmp_path), "-c", 'echo "$$"; read x'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert _ofd_locks(pid) == [f"READ {expected} EOF"]
    finally:
        proc.communicate("\n", timeout=10)


@pytest.mark.parametrize(("option", "value"), [("-E", " 7"), ("-E", "+7"), ("--conf", "7")])
def test_numbers_as_strtoul_reads_them(
    tool: str, lock_path: str, holders: Holders, option: str, value: str
) -> None:
    """-E CODE takes leading spaces and a "+", as strtoul() does."""
    hold(holders, lock_path)
    proc = subprocess.run([tool, "-n", option, value, lock_path, "true"], timeout=30)
    assert proc.returncode == 7


def test_unlock_on_a_file_passes_the_descriptor(tool: str, lock_path: str) -> None:
    """-u LOCKFILE COMMAND: the command inherits the (unlocked) lock file's
    descriptor, as it does a locked one."""
    proc = sh("$T -u \"$L\" bash -c 'ls -l /proc/$$/fd'", tool, lock_path)
    assert proc.stdout.count(lock_path) == 1


@pytest.mark.parametrize(("shell", "expected"), [("/bin/bash", "bash\n"), ("", "sh\n")])
def test_command_runs_dollar_shell(tool: str, lock_path: str, shell: str, expected: str) -> None:
    """-c runs $SHELL -c, or /bin/sh when SHELL is unset or empty."""
    proc = sh('$T "$L" -c \'if [ -n "$BASH_VERSION" ]; then echo bash; else echo sh; fi\'',
              tool, lock_path, SHELL=shell)  # fmt: skip
    assert (proc.stdout, proc.stderr) == (expected, "")


def test_verbose_output(tool: str, lock_path: str, holders: Holders) -> None:
    """--verbose prints flock(1)'s lines: "getting lock took" and "executing" on
    stdout; "failed to get lock" (-n) and "timeout while waiting to get lock"
    (-w) on stderr. (flock(1) buffers its own lines until it exits, after
    the command's output; touchfile prints them as they happen.)"""
    proc = sh('$T --verbose "$L" echo ran', tool, lock_path)
    lines = proc.stdout.splitlines()
    took = [line for line in lines if line.startswith(f"{name(tool)}: getting lock took ")]
    assert len(took) == 1 and re.fullmatch(r".* took \d+\.\d{6} seconds", took[0])
    assert sorted(set(lines) - set(took)) == sorted([f"{name(tool)}: executing echo", "ran"])
    assert proc.stderr == ""
    hold(holders, lock_path)
    proc = sh('$T --verbose -n "$L" true; $T --verbose -w 0.1 "$L" true', tool, lock_path)
    assert proc.stdout == ""
    assert proc.stderr == (
        f"{name(tool)}: failed to get lock\n{name(tool)}: timeout while waiting to get lock\n"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_dies_of_the_signal_that_ends_the_wait(
    tool: str, lock_path: str, holders: Holders, signum: int
) -> None:
    """A stop signal while waiting: the command dies of it (waitpid() sees the
    signal, not an exit status), and what it would have run never runs."""
    hold(holders, lock_path)
    marker = Path(lock_path + ".ran")
    proc = subprocess.Popen([tool, lock_path, "touch", str(marker)], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _blocked_on(lock_path), timeout=10)  # waiting in the kernel
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (-signum, b"")
    assert not marker.exists()


def test_command_equals_with_more_arguments(lock_path: str) -> None:
    """--command=X after LOCKFILE takes nothing more, as -c X does (64)."""
    proc = sh('$T "$L" --command="echo a" "echo b"', TOUCHFILE, lock_path)
    assert proc.returncode == 64 and proc.stdout == ""


def test_command_status_of_a_signal(tool: str, lock_path: str) -> None:
    """A command that dies of signal N: the command exits 128+N (it does not
    die itself), as flock(1)."""
    proc = sh("$T \"$L\" bash -c 'kill -TERM $$'", tool, lock_path)
    assert proc.returncode == 128 + signal.SIGTERM


def test_running_command_gets_the_signal(lock_path: str) -> None:
    """A deliberate difference: touchfile passes SIGTERM on to the running command
    (flock(1) would die and leave it running); it then exits with the command's
    status."""
    proc = subprocess.Popen(
        [TOUCHFILE, lock_path, sys.executable, program("counter"), str(int(signal.SIGTERM))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 11  # counter: 10 + one signal seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---- touchfile's own checks of the same options ------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--fd", "0"], "--fd FD needs a command"),
        (["/tmp/x.lock"], "'/tmp/x.lock' is not a descriptor number"),
        (["--fd", "x", "true"], "invalid file descriptor 'x'"),
        (["--start", "1Q", "/tmp", "true"], "invalid start offset '1Q'"),
        (["--length", "-1", "/tmp", "true"], "invalid length '-1'"),
        (["-F", "-o", "/tmp", "true"], "the --no-fork and --close options are incompatible"),
        (["--ver"], "option '--ver' is ambiguous; possibilities: '--verbose' '--version'"),
        (["--holders", "/tmp", "true"], "--holders takes only LOCKFILE"),
        (["/tmp", "-c"], "-c requires exactly one command argument"),
    ],
)
def test_usage_errors(args: list[str], words: str) -> None:
    """Each bad command line is one line on stderr saying what is wrong, status 64."""
    proc = subprocess.run([TOUCHFILE, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64
    assert proc.stderr.startswith("touchfile: ") and proc.stderr.count("\n") == 1
    assert words in proc.stderr and proc.stderr.endswith(" (see touchfile --help)\n")


def test_abbreviation_prefers_flocks_options(lock_path: str) -> None:
    """An abbreviation that fits one of flock(1)'s options means it, even where it
    fits one of touchfile's own too (--h is --help, not --holders); --ho is --holders."""
    helped = subprocess.run([TOUCHFILE, "--h"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: touchfile")
    Path(lock_path).touch()
    listed = subprocess.run(
        [TOUCHFILE, "--ho", lock_path], capture_output=True, text=True, timeout=30
    )
    assert (listed.returncode, listed.stdout) == (0, f"no process holds a lock on {lock_path}\n")


def test_holders_of_a_file_named_like_a_descriptor(tmp_path: Path) -> None:
    """--holders 9 lists the holders of the file named 9, never descriptor 9."""
    proc = subprocess.run(
        [TOUCHFILE, "--holders", "9"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert (proc.returncode, proc.stderr) == (
        66,
        "touchfile: cannot read lock file 9: No such file or directory\n",
    )


@pytest.mark.usefixtures("mode")  # waits: native and polling
def test_fd_form_deadline(lock_path: str) -> None:
    """FD alone with -w: the wait for an inherited descriptor's lock ends at the
    deadline (natively, or by polling), with the conflict status."""
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run(
            ["bash", "-c", f'exec 9<"{lock_path}"; "{TOUCHFILE}" -w 0.3 -E 9 9'],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (9, "")


def test_fd_form_failure_leaves_the_descriptor_unlocked(lock_path: str) -> None:
    """FD alone that fails (here, a bad TOUCHFILE_NATIVE: status 78) leaves the
    caller's descriptor as it was: unlocked."""
    script = """
    exec 9>"$L"
    TOUCHFILE_NATIVE=maybe $T -n 9; echo "failed $?"
    $T -n -E 7 "$L" true; echo "other $?"
    """
    proc = sh(script, TOUCHFILE, lock_path)
    assert proc.stdout == "failed 78\nother 0\n"
    assert proc.stderr == "touchfile: TOUCHFILE_NATIVE must be 0 or 1, not 'maybe'\n"
