"""The PostgreSQL examples run as-is against the suite's server and do what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from pgserver import External, Server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_worker_fleet_loses_no_update(pg_dsn: str) -> None:
    """Workers in four processes rebuild one cache under the lock: every
    rebuild counted, none lost; the impatient worker's deadline makes it give
    up at times, and it names the holder."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "worker_fleet.py"), pg_dsn],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    summary = re.search(
        r"rebuilds: (\d+), gave up: (\d+), final version: (\d+), lost updates: 0", out
    )
    assert summary is not None, out
    rebuilds, gave_up, version = map(int, summary.groups())
    assert rebuilds + gave_up == 20 and version == rebuilds and rebuilds >= 15
    for line in out.splitlines():
        if line.startswith("[") and "gave up" in line:
            assert line.startswith("[worker 0] gave up: timed out after 0.0")
            assert "(held by pid " in line or "(held by nobody now)" in line
    assert out.rstrip().endswith("OK")


def test_cron_job_never_overlaps_across_hosts(pg_server: Server | External) -> None:
    """Two runs of the cron job at once (stand-ins for two hosts): the second
    skips its turn and names the holder's session; a run after the first ends works."""
    bin_dir = str(Path(sys.executable).parent)  # where the touchfile command is
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CRON_JOB_DB": pg_server.url(),
        "CRON_JOB_NAME": f"cron-{uuid.uuid4()}",
        "CRON_JOB_SECONDS": "1.5",
    }
    script = [str(EXAMPLES / "cron_job_hosts.sh")]
    first = subprocess.Popen(script, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
    try:
        assert first.stdout is not None
        assert re.fullmatch(r"cron_job_hosts: run \d+ on \S+ started\n", first.stdout.readline())
        second = subprocess.run(script, capture_output=True, text=True, env=env, timeout=30)
        assert (second.returncode, second.stdout) == (0, "")
        assert "another run holds the lock; skipping" in second.stderr
        assert "exclusive  touchfile pid " in second.stderr  # --holders: the session's name
        assert first.wait(timeout=30) == 0
        assert re.fullmatch(r"cron_job_hosts: run \d+ on \S+ finished\n", first.stdout.read())
        third = subprocess.run(script, capture_output=True, text=True, env=env, timeout=30)
        assert third.returncode == 0 and "finished" in third.stdout, third.stderr
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        if first.stdout is not None:
            first.stdout.close()
