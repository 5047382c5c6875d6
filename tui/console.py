"""What the screens may use of the running console.

`tui.app.EdgeFluxApp` is the one implementation; the screens see it through
:class:`ConsoleApp` (`tui.screens._chrome.fleet_app`), so they never import the app
that composes them.
"""

from __future__ import annotations

from typing import Any, Literal

from textual.app import App
from textual.reactive import reactive
from textual.screen import Screen

from tui.client import AdminClient
from tui.store import FleetStore
from tui.verify import TrustedKey

__all__ = ["ConsoleApp"]


class ConsoleApp(App[None]):
    """The console's shared state (plane client, fleet store, trusted keys) and actions."""

    status_line: reactive[str] = reactive("connecting…")
    connected: reactive[bool] = reactive(False)

    client: AdminClient
    store: FleetStore
    trusted_keys: list[TrustedKey]
    read_only: bool
    fleet_screen: Screen[Any] | None
    """The fleet screen while it is mounted (it gets each fleet diff)."""

    def refresh_status(self) -> None:
        """Recompute the connection bar's line from the store and connection state."""
        raise NotImplementedError

    def open_device(self, device_id: str) -> None:
        """Show one device's screen."""
        raise NotImplementedError

    def export_view(self, fmt: Literal["csv", "json"]) -> None:
        """Write the fleet's current filtered, sorted view to a file."""
        raise NotImplementedError
