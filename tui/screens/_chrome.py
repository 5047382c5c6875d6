"""Pieces every screen shares: the connection bar, `?` help and the `:` jump prompt."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Input, Label, Static

from tui.console import ConsoleApp

JUMP_TARGETS = ("fleet", "bundles", "attestations", "routing", "rollouts", "device ")


def fleet_app(widget: object) -> ConsoleApp:
    """The running app, typed (screens and widgets reach the store and client through it)."""
    app = widget.app  # type: ignore[attr-defined]
    assert isinstance(app, ConsoleApp)
    return app


class ConnectionBar(Static):
    """One line: plane address, connection state, fleet counts, live/paused."""

    def on_mount(self) -> None:
        app = fleet_app(self)
        self.watch(app, "status_line", self._show)
        self.watch(app, "connected", self._style)

    def _show(self, text: str) -> None:
        self.update(text)

    def _style(self, connected: bool) -> None:
        self.set_class(not connected, "-disconnected")


class HelpScreen(ModalScreen[None]):
    """Every key the screen underneath offers, generated from its bindings."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, title: str, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self._title = title
        self._rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Label(f"Keys — {self._title}", id="help-title")
            table: DataTable[str] = DataTable(id="help-table", cursor_type="none")
            table.add_columns("Key", "Action")
            for key, desc in self._rows:
                table.add_row(key, desc)
            yield table
            yield Label("escape closes · ctrl+p lists every command", classes="hint")


class JumpScreen(ModalScreen[str | None]):
    """`:` — type a screen name (or `device <id>`) and press enter."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="jump-box"):
            yield Label(
                "Jump to: fleet · bundles · attestations · routing · rollouts · device <id>"
            )
            yield Input(
                placeholder=":",
                id="jump-input",
                suggester=SuggestFromList(list(JUMP_TARGETS), case_sensitive=False),
            )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
