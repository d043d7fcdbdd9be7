"""After fork(), in the child: the one place where what the parent's other
threads left behind is reset (the C core has its own pthread_atfork handlers).

The child has one thread. A lock that another thread held at fork stays
locked in the child for ever, a thread that was waiting does not exist, and
a lock file descriptor copied from the parent keeps the parent's lock alive.
"""

from __future__ import annotations

import os
import sys

from . import _context
from ._acquire import snapshot


def _after_fork_in_child() -> None:
    _context.reset_after_fork()
    # Only if loaded: it imports asyncio, which costs a command 50 ms.
    async_ = sys.modules.get(f"{__package__}._async")
    if async_ is not None:
        async_.reset_after_fork()
    for locks in snapshot():
        locks.forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
