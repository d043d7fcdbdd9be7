"""The two kinds of lock, and the one place where a caller's kind is checked."""

from __future__ import annotations

import enum


class LockType(enum.Enum):
    """The kind of a lock: many SHARED holders at once, or one EXCLUSIVE holder."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive"


# Pickles (of LockTimeout's kind, say) name it touchfile.LockType, which every
# version has, wherever the class lives.
LockType.__module__ = "touchfile"

SHARED = LockType.SHARED
EXCLUSIVE = LockType.EXCLUSIVE


def parse_kind(kind: object) -> LockType:
    """kind as a LockType: a LockType, or its name "shared"/"exclusive".

    Raises TypeError (not a kind) or ValueError (an unknown name).
    """
    if isinstance(kind, LockType):
        return kind
    if isinstance(kind, str):
        try:
            return LockType(kind.lower())
        except ValueError:
            raise ValueError(f"kind must be 'shared' or 'exclusive', not {kind!r}") from None
    hint = ""
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        hint = f" (a timeout is given by name: timeout={kind!r})"
    raise TypeError(f"kind must be a LockType (SHARED or EXCLUSIVE), not {kind!r}{hint}")
