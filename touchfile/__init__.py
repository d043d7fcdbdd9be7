"""touchfile: shared and exclusive lock files whose waits block in the kernel.

Example::

    from touchfile import TouchFile

    with TouchFile("/tmp/myjob.lock") as tf, tf.lock(timeout=5):
        ...  # one process (and one thread) at a time

The names below are imported when first used (PEP 562), so that the touchfile
command can take a free lock before it imports the rest of the package.
"""

from ._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from ._context import Context
    from ._errors import LockCancelled, LockError, LockLost, LockTimeout
    from ._holders import LockHolder
    from ._kinds import EXCLUSIVE, SHARED, LockType
    from ._lock import TouchFile
del TYPE_CHECKING

# Each public name, and the module that defines it.
_HOME = {
    "Context": "_context",
    "LockCancelled": "_errors",
    "LockError": "_errors",
    "LockLost": "_errors",
    "LockTimeout": "_errors",
    "LockHolder": "_holders",
    "EXCLUSIVE": "_kinds",
    "SHARED": "_kinds",
    "LockType": "_kinds",
    "TouchFile": "_lock",
}

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


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'touchfile' has no attribute {name!r}")
    import importlib

    importlib.import_module(f"{__name__}._fork")  # resets the child after fork()
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
