"""The store's errors: every failure a caller of the store has to handle."""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "FencedError",
    "NotFoundError",
    "StaleWriteError",
    "StoreError",
    "StoreUnavailable",
]


class StoreError(Exception):
    """Base of every error the store raises."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; retry later."""


class ConflictError(StoreError):
    """A uniqueness rule refused the write; nothing was written."""


class NotFoundError(StoreError):
    """The requested row does not exist."""


class FencedError(StoreError):
    """The writer's term of leadership is over (a newer one began); nothing was written."""


class StaleWriteError(StoreError):
    """The row changed since the writer read it (someone else wrote it meanwhile);
    nothing was written: read it again."""
