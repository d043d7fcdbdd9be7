"""A child program of tests/test_faults.py::test_too_many_open_files_temporary
(see that test for what it pins)."""

from __future__ import annotations

import errno
import os
import resource

from touchfile import TouchFile

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
filler = []
try:
    while True:
        filler.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    TouchFile()
except OSError as error:
    print(errno.errorcode[error.errno or 0])
