"""fork() while another thread is inside PostgresLock.holders(): each child
must close its copy at once (no mutex left held by the parent's thread, no
word to the parent's sessions). argv: DSN NAME. Prints how the children ended."""

from __future__ import annotations

import os
import signal
import sys
import threading

from touchfile.postgres import PostgresLock

dsn, name = sys.argv[1], sys.argv[2]
lk = PostgresLock(name, dsn)
lk.acquire()
stop = threading.Event()


def look() -> None:
    while not stop.is_set():
        lk.holders()


looker = threading.Thread(target=look)
looker.start()
codes = []
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # a child that hangs dies of SIGALRM
        lk.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))
stop.set()
looker.join()
print("children:", sorted(set(codes)))
print("holders:", len(lk.holders()))
lk.release()
lk.close()
