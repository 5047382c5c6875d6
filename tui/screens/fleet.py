"""The fleet screen: a live table of every device, filtered and sorted by the store."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Input

from tui.query import QueryError
from tui.rows import COLUMNS
from tui.screens._chrome import ConnectionBar, fleet_app
from tui.screens._fleet_table import FleetTable
from tui.store import Diff

_SORT_KEYS = "1234567890"


class FleetScreen(Screen[None]):
    """Live fleet table: a virtual view of the store's filtered, sorted devices."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        # priority: handled as the key arrives, so focus is back on the table before the
        # next key is read (a fast "site=lab⏎e" must export, not type "e" into the box)
        Binding("enter", "enter", "Open / apply filter", show=False, priority=True),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("space", "pause", "Pause/live"),
        Binding("m", "mark", "Mark"),
        Binding("a", "mark_all", "Mark shown"),
        Binding("u", "unmark_all", "Unmark all"),
        Binding("p", "push", "Push…"),
        Binding("e", "export('csv')", "CSV"),
        Binding("E", "export('json')", "JSON", show=False),
        *[
            Binding(key, f"sort('{col.key}')", f"Sort by {col.title}", show=False)
            for key, col in zip(_SORT_KEYS, COLUMNS, strict=False)
        ],
    ]

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        yield Input(
            placeholder="filter: text  label=value  label!=value  state=failed  bundle=name  "
            "online|offline   (enter keeps it, escape hides)",
            id="filter",
        )
        yield FleetTable(fleet_app(self).store, id="fleet")
        yield Footer()

    @property
    def table(self) -> FleetTable:
        return self.query_one("#fleet", FleetTable)

    def on_mount(self) -> None:
        app = fleet_app(self)
        app.fleet_screen = self
        self._refresh_headers()
        self.rebuild()
        self.set_focus(self.table)

    def on_unmount(self) -> None:
        app = fleet_app(self)
        if app.fleet_screen is self:
            app.fleet_screen = None

    # ---- rendering -----------------------------------------------------------
    def _header(self, key: str, title: str, shortcut: str) -> Text:
        store = fleet_app(self).store
        label = Text(f"{title}")
        if shortcut:
            label.append(f" {shortcut}", style="dim")
        if store.sort_key == key:
            label.append(" ▼" if store.sort_reverse else " ▲", style="bold")
        return label

    def _refresh_headers(self) -> None:
        t = self.table
        for n, col in enumerate(COLUMNS):
            key = _SORT_KEYS[n] if n < len(_SORT_KEYS) else ""
            t.set_header(col.key, self._header(col.key, col.title, key))

    def rebuild(self) -> None:
        """The visible rows changed wholesale (filter, snapshot): redraw, keep the cursor."""
        if not self.is_mounted:
            return
        self.table.rows_changed()
        fleet_app(self).refresh_status()

    def show_diff(self, diff: Diff) -> None:
        """Apply a store diff. The table holds no rows, so this is a redraw decision."""
        if not self.is_mounted:
            return
        if not diff.empty:
            t = self.table
            if diff.reset or diff.added or diff.removed or diff.reordered:
                t.rows_changed()
            else:
                t.rows_updated(diff.updated)
        fleet_app(self).refresh_status()

    # ---- actions -------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "push" and fleet_app(self).read_only)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = fleet_app(self).store.query.text
        self.set_focus(box)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self._apply_filter(event.value, quiet=True)

    def action_enter(self) -> None:
        box = self.query_one("#filter", Input)
        if not box.has_focus:
            self.table.action_select()
        elif self._apply_filter(box.value, quiet=False):
            # the box closes; the filter stays in the status line and `/` edits it again
            self.set_focus(self.table)
            box.display = False

    def _apply_filter(self, text: str, quiet: bool) -> bool:
        store = fleet_app(self).store
        if text.strip() == store.query.text:
            return True
        try:
            store.set_query(text)
        except QueryError as exc:
            if not quiet:
                self.notify(str(exc), title="Filter not applied", severity="error")
            return False
        self.rebuild()
        return True

    def action_clear_filter(self) -> None:
        """Escape: leave the filter box (keeping the filter); from the table, clear it."""
        box = self.query_one("#filter", Input)
        if box.has_focus:
            self.set_focus(self.table)
            if not box.value.strip():
                box.display = False
            return
        if fleet_app(self).store.query.text:
            box.value = ""
            box.display = False
            self._apply_filter("", quiet=False)

    def action_sort(self, key: str) -> None:
        fleet_app(self).store.set_sort(key)
        self._refresh_headers()
        self.table.rows_changed()

    def action_pause(self) -> None:
        app = fleet_app(self)
        if app.store.paused:
            self.show_diff(app.store.resume())
        else:
            app.store.pause()
        app.refresh_status()

    def action_mark(self) -> None:
        t = self.table
        device_id = t.cursor_id
        if device_id is None:
            return
        fleet_app(self).store.toggle_mark(device_id)
        t.move_cursor(t.cursor_row + 1)
        fleet_app(self).refresh_status()

    def action_mark_all(self) -> None:
        fleet_app(self).store.mark_visible()
        self.table.refresh()
        fleet_app(self).refresh_status()

    def action_unmark_all(self) -> None:
        fleet_app(self).store.clear_marks()
        self.table.refresh()
        fleet_app(self).refresh_status()

    def action_push(self) -> None:
        app = fleet_app(self)
        app.switch_mode("bundles")
        n = len(app.store.marked())
        target = f"the {n} marked robot(s)" if n else "a label selector"
        self.notify(f"Choose a bundle and press p to push it to {target}.")

    def action_export(self, fmt: str) -> None:
        fleet_app(self).export_view("json" if fmt == "json" else "csv")

    def on_fleet_table_selected(self, event: FleetTable.Selected) -> None:
        fleet_app(self).open_device(event.device_id)

    def on_fleet_table_header_clicked(self, event: FleetTable.HeaderClicked) -> None:
        self.action_sort(event.column_key)
