"""A command for the tests: writes one line per open descriptor of its own,
"FD ACCESS TARGET" (ACCESS is r, w or rw), to the file named by argv[1], since
its stdout may be what is being looked at."""

from __future__ import annotations

import fcntl
import os
import sys

ACCESS = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}

lines = []
for name in sorted(os.listdir("/proc/self/fd"), key=int):
    fd = int(name)
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:  # the listing's own descriptor, closed by now
        continue
    lines.append(f"{fd} {ACCESS[flags & os.O_ACCMODE]} {target}\n")
with open(sys.argv[1], "w") as out:
    out.writelines(lines)
