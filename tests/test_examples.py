"""Every example runs as-is and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_takes_turns_and_times_out() -> None:
    """The Quickstart demo: a handoff between two processes, then an expired deadline."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[child]  got the lock after" in out
    assert "the child held it" in out
    assert "timed out after 0.3" in out and "exclusive lock on" in out
    assert out.rstrip().endswith("[child]  released")
