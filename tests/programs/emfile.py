"""A child program of tests/test_faults.py::test_too_many_open_files
(see that test for what it pins)."""

from __future__ import annotations

import errno
import os
import resource
import sys
import threading

import touchfile._cli
from touchfile import TouchFile

path = sys.argv[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def count() -> int:
    return len(os.listdir("/proc/self/fd"))


tf = TouchFile(path)
tf.acquire()  # the pooled descriptor is in use: another thread needs a new one
before = count()
filler = []
try:
    while True:
        filler.append(os.open(os.devnull, os.O_RDONLY))
except OSError as error:
    assert error.errno == errno.EMFILE
try:
    TouchFile(path)
except OSError as error:
    print("new:", errno.errorcode[error.errno or 0], error.filename == path)


def other() -> None:
    try:
        tf.acquire(timeout=5)
    except OSError as error:
        print("thread:", errno.errorcode[error.errno or 0], error.filename == path, tf.locked())


thread = threading.Thread(target=other)
thread.start()
thread.join()
print("command:", touchfile._cli.main([path, "true"]), flush=True)
for fd in filler:
    os.close(fd)
print("leaked:", count() - before)
tf.release()


def again() -> None:
    tf.acquire(timeout=5)
    print("recovered:", tf.locked())
    tf.release()


thread = threading.Thread(target=again)
thread.start()
thread.join()
tf.close()
