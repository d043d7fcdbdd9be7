"""touchfile: shared and exclusive lock files whose waits block in the kernel.

Example::

    from touchfile import TouchFile

    with TouchFile("/tmp/myjob.lock") as tf, tf.lock(timeout=5):
        ...  # one process (and one thread) at a time
"""

from . import _fork  # noqa: F401  (after fork(), in the child)
from ._context import Context
from ._errors import LockCancelled, LockError, LockLost, LockTimeout
from ._holders import LockHolder
from ._kinds import EXCLUSIVE, SHARED, LockType
from ._lock import TouchFile
from ._version import __version__

__all__ = [
    "EXCLUSIVE",
    "SHARED",
    "Context",
    "LockCancelled",
    "LockError",
    "LockHolder",
    "LockLost",
    "LockTimeout",
    "LockType",
    "TouchFile",
    "__version__",
]
