"""The touchfile command (argv[2:]) hit by signal argv[1] from inside, at the
very moment its stop signals' handlers are in place
(tests/test_cli.py::test_stop_signal_as_handlers_are_put_in_place)."""

from __future__ import annotations

import os
import sys

from touchfile import _cli, _cli_exec

catch = _cli_exec.catch_stop_signals


def late() -> set[int]:
    ignored = catch()
    os.kill(os.getpid(), int(sys.argv[1]))
    return ignored


_cli_exec.catch_stop_signals = late
sys.exit(_cli.main(sys.argv[2:]))
