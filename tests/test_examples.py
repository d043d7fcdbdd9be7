"""Every example runs as-is and does what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("mode")  # every test here waits: native and polling

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    """Run examples/NAME as-is (outside the source tree); it must succeed. Its stdout."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_demo_takes_turns_and_times_out() -> None:
    """The Quickstart demo: a handoff between two processes, then an expired deadline."""
    out = run_example("demo.py")
    assert "[child]  got the lock after" in out
    assert "the child held it" in out
    assert "timed out after 0.3" in out and "exclusive lock on" in out
    assert out.rstrip().endswith("[child]  released")


def test_cache_readers_share_and_writer_excludes() -> None:
    """Reader processes hold the shared lock together, never beside the writer, never torn."""
    out = run_example("cache_readers_writer.py")
    assert "reads: 32, whole and unchanged: 32, torn or changed: 0" in out
    together = re.search(r"holding the shared lock together: up to (\d+) at once", out)
    assert together is not None and int(together.group(1)) >= 2, out
    assert "reader/writer overlaps: 0" in out
    assert out.count("[writer] waited") == 4
    assert "versions the readers saw: 0," in out
    assert out.rstrip().splitlines()[-1].startswith("OK:")


def test_with_lock_deadline_budget() -> None:
    """with_lock returns fn's result, and a shared budget ends a wait without calling fn."""
    out = run_example("with_lock_deadline.py")
    assert "[step 1] shared lock: read returned 0;" in out
    assert "[step 2] exclusive lock: bump returned 1;" in out
    assert "[step 3] LockTimeout: timed out after 0." in out
    assert "waiting for exclusive lock on" in out
    late = re.search(r"ended (-?[\d.]+) ms after the budget's deadline", out)
    assert late is not None and 0 <= float(late.group(1)) < 500, out
    assert "[step 3] bump was called 0 times; the counter is still 1" in out
    assert "[step 4] budget spent: LockTimeout at once" in out
    assert "timed out after 0.000 s waiting for exclusive lock" in out
    assert "[step 4] bump was called 0 times; the counter is still 1" in out
    assert out.rstrip().endswith("OK")


def test_worker_pool_cancelled_by_one_context() -> None:
    """One ctx.cancel() ends every worker thread's wait promptly, and no worker gets the lock."""
    out = run_example("worker_pool_cancel.py")
    ended = re.findall(r"\[worker \d\] (?:shared|exclusive) +cancelled .*, ([\d.]+) ms after", out)
    assert len(ended) == 8, out
    assert all(float(ms) < 100 for ms in ended), out
    assert "cancelled: 8 of 8; got the lock: 0" in out
    assert "GOT THE LOCK" not in out
    assert "the main thread still holds the lock: True" in out
    assert out.rstrip().endswith("OK")


def test_async_service_never_blocks_its_loop() -> None:
    """Async jobs: the loop never stalls, a handoff, a timeout, prompt cancels, no lock left."""
    out = run_example("async_service.py")
    gap = re.search(r"the loop ticked (\d+) times; largest gap ([\d.]+) ms", out)
    assert gap is not None and int(gap.group(1)) > 50 and float(gap.group(2)) < 100, out
    handoff = re.search(r"\[report\] got the lock ([\d.]+) ms after the other one let go", out)
    assert handoff is not None and float(handoff.group(1)) < 100, out
    assert "[refresh] gave up: timed out after 0." in out
    assert "s waiting for exclusive lock on" in out
    assert "cancelling 2 jobs waiting for the lock" in out
    assert out.count("cancelled while waiting for the lock") == 2
    ended = re.findall(r"\[service\] reindex-[ab] ended ([\d.]+) ms after task.cancel\(\)", out)
    assert len(ended) == 2 and all(float(ms) < 100 for ms in ended), out
    assert "[report] done" in out
    assert "lock free after shutdown (non-blocking flock): True" in out
    assert out.rstrip().endswith("OK")


def test_cron_job_never_overlaps(tmp_path: Path) -> None:
    """The cron job: a run started while another is going skips its turn (status 0)
    and names the holder; a run after it finishes does the work."""
    bin_dir = str(Path(sys.executable).parent)  # where the touchfile command is
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CRON_JOB_LOCK": str(tmp_path / "cron.lock"),
        "CRON_JOB_SECONDS": "1.5",
    }
    script = [str(EXAMPLES / "cron_job.sh")]  # runnable as-is: it is executable
    first = subprocess.Popen(script, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
    try:
        assert first.stdout is not None
        assert re.fullmatch(r"cron_job: run \d+ started\n", first.stdout.readline())
        second = subprocess.run(script, capture_output=True, text=True, env=env, timeout=30)
        assert (second.returncode, second.stdout) == (0, "")
        assert "the previous run still holds" in second.stderr and "skipping" in second.stderr
        assert "exclusive  sh " in second.stderr and "--locked" in second.stderr  # --holders
        assert first.wait(timeout=30) == 0
        assert re.fullmatch(r"cron_job: run \d+ finished\n", first.stdout.read())
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        if first.stdout is not None:
            first.stdout.close()
    env["CRON_JOB_SECONDS"] = "0"
    third = subprocess.run(script, capture_output=True, text=True, env=env, timeout=30)
    assert third.returncode == 0 and third.stdout.endswith("finished\n"), third.stderr
