"""Messages that bring worker results back to the UI thread."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from tui.client import AdminError, WatchBatch

__all__ = ["ConnectionChanged", "FetchFailed", "Fetched", "FleetBatch"]


class FleetBatch(Message):
    """A batch of fleet changes (or a fresh snapshot) from the watch worker."""

    def __init__(self, batch: WatchBatch) -> None:
        super().__init__()
        self.batch = batch


class ConnectionChanged(Message):
    def __init__(self, connected: bool, detail: str) -> None:
        super().__init__()
        self.connected = connected
        self.detail = detail


class Fetched(Message):
    """A finished one-shot call: `what` names it, `value` is its result."""

    def __init__(self, what: str, value: Any) -> None:
        super().__init__()
        self.what = what
        self.value = value


class FetchFailed(Message):
    def __init__(self, what: str, error: AdminError) -> None:
        super().__init__()
        self.what = what
        self.error = error
