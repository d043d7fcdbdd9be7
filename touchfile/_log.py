"""The "touchfile" logger, without importing logging on touchfile's own account.

Importing logging takes milliseconds that the command cannot spare, and until
something has imported it (the application, to configure it, or a library it
uses, as asyncio does) nothing could be logged anywhere. So the logger is
looked up only once logging is there, and gets its NullHandler then, as a
library's logger does. The one message that must not be lost, the fall back to
polling, imports logging itself (warn_once()).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

DEBUG = 10
_log: Any = None  # the logger, once found
_warned: set[str] = set()
# For the hot path, once the logger is found: cached(DEBUG) is False when the
# logger is known not to take DEBUG records (True or None: ask debugging()).
# It is the logger's own cache of isEnabledFor() answers, read without a
# Python call (a tenth of an uncontended acquisition's cost); logging empties
# that dict, never replaces it, when levels change.
cached: Callable[[int], bool | None] | None = None


def logger() -> Any:
    """The "touchfile" logger, or None while logging is not imported."""
    global _log, cached
    if _log is None:
        logging = sys.modules.get("logging")
        if logging is not None:
            log = logging.getLogger(__package__)
            log.addHandler(logging.NullHandler())
            cache = getattr(log, "_cache", None)
            cached = cache.get if isinstance(cache, dict) else _unknown
            _log = log
    return _log


def _unknown(level: int) -> None:
    return None


def debugging() -> bool:
    """Whether the logger takes DEBUG records (False while logging is not imported)."""
    log = logger()
    return log is not None and bool(log.isEnabledFor(DEBUG))


def warn_once(message: str) -> None:
    """Log message as a WARNING, the first time only."""
    if message not in _warned:
        _warned.add(message)
        import logging  # noqa: F401  (so that logger() finds it)

        logger().warning(message)
