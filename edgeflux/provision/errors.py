"""Errors of flashing; each message says what to do."""

from __future__ import annotations

__all__ = ["FlashError"]


class FlashError(RuntimeError):
    """The flash cannot proceed or its result did not verify; nothing unsafe was left behind."""
