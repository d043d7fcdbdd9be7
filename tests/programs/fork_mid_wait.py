"""fork() while another thread waits with a deadline: the child's own wait
ends at its deadline, no signal of the parent's wait (its deadline timer is
not inherited) reaches the child, and the parent's wait ends at its own.

usage: fork_mid_wait.py LOCK_PATH; prints "child timeout ok" and
"parent timeout ok 0" (the child's exit status)."""

import fcntl
import os
import sys
import threading
import time
import warnings

from touchfile import LockTimeout, TouchFile

warnings.simplefilter("ignore", DeprecationWarning)  # fork() with a thread, on purpose
path = sys.argv[1]
holder = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
fcntl.flock(holder, fcntl.LOCK_EX)  # another description holds it throughout
tf = TouchFile(path)
parent: list[str] = []


def timed_wait(timeout: float) -> str:
    start = time.monotonic()
    try:
        tf.acquire(timeout=timeout)
    except LockTimeout:
        waited = time.monotonic() - start
        return "timeout " + ("ok" if timeout <= waited < timeout + 0.5 else f"{waited:.3f}")
    return "granted"


thread = threading.Thread(target=lambda: parent.append(timed_wait(1.0)))
thread.start()
time.sleep(0.3)  # the thread waits in the kernel now, its deadline armed
pid = os.fork()
if pid == 0:
    print("child", timed_wait(0.1), flush=True)
    time.sleep(1.0)  # past the parent's deadline: nothing of its wait comes here
    os._exit(0)
_, status = os.waitpid(pid, 0)
thread.join()
print("parent", parent[0], os.waitstatus_to_exitcode(status), flush=True)
