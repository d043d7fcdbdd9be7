"""Runs argv[1:] (execv) with SIGCHLD ignored, as some parents leave it
(tests/test_cli.py::test_ignored_sigchld_does_not_hang)."""

from __future__ import annotations

import os
import signal
import sys

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
os.execv(sys.argv[1], sys.argv[1:])
