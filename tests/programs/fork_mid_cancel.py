"""A child program of tests/test_processes.py::test_contexts_work_in_a_child_forked_mid_cancel
(see that test for what it pins)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

import touchfile._context
from touchfile import Context, TouchFile

warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
taken, done = threading.Event(), threading.Event()


def busy() -> None:  # a thread of the parent inside Context's bookkeeping at fork()
    with touchfile._context._tree:
        taken.set()
        done.wait()


thread = threading.Thread(target=busy)
thread.start()
taken.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(5)  # a deadlock dies of SIGALRM
    ctx = Context.with_cancel(parent=Context.with_timeout(5))
    with TouchFile(sys.argv[1]) as tf, tf.lock(ctx=ctx):
        pass
    ctx.cancel()
    os._exit(0)
done.set()
thread.join()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
