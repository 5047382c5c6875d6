"""The fleet screen: a live table of every device, filtered and sorted by the store."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input
from textual.widgets.data_table import ColumnKey, RowDoesNotExist

from tui.screens._chrome import ConnectionBar, fleet_app
from tui.store import COLUMNS, DeviceRow, Diff, QueryError, rank

MARK = "●"
# Past this many removals one rebuild beats DataTable.remove_row (O(rows) each).
REBUILD_REMOVALS = 64

_SORT_KEYS = "1234567890"


class FleetScreen(Screen[None]):
    """Live fleet table. Rows are keyed by device id and updated cell by cell."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
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

    def __init__(self) -> None:
        super().__init__()
        self._cells: dict[str, tuple[str, ...]] = {}

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        yield Input(
            placeholder="filter: text  label=value  label!=value  state=failed  bundle=name  "
            "online|offline   (enter keeps it, escape hides)",
            id="filter",
        )
        table: DataTable[str | Text] = DataTable(id="fleet", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#fleet", DataTable)

    def on_mount(self) -> None:
        app = fleet_app(self)
        app.fleet_screen = self
        t = self.table
        t.add_column(" ", key="mark", width=1)
        for n, col in enumerate(COLUMNS):
            key = _SORT_KEYS[n] if n < len(_SORT_KEYS) else ""
            t.add_column(
                self._header(col.key, col.title, key),
                key=col.key,
                width=max(col.width, len(col.title) + 4),
            )
        self.rebuild()
        t.focus()

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
            t.columns[ColumnKey(col.key)].label = self._header(col.key, col.title, key)
        t.refresh()

    def _row_cells(self, row: DeviceRow) -> tuple[str, ...]:
        marked = MARK if row.id in fleet_app(self).store.marks else ""
        return (marked, *(col.text(row) for col in COLUMNS))

    def _cursor_id(self) -> str | None:
        t = self.table
        if t.row_count == 0:
            return None
        try:
            key = t.coordinate_to_cell_key(Coordinate(t.cursor_row, 0)).row_key
        except Exception:  # cursor outside the table after a rebuild
            return None
        return key.value

    def _restore_cursor(self, device_id: str | None) -> None:
        if device_id is None:
            return
        t = self.table
        try:
            index = t.get_row_index(device_id)
        except RowDoesNotExist:
            return
        if index != t.cursor_row:
            t.move_cursor(row=index, animate=False)

    def rebuild(self) -> None:
        """Refill the table from the store's visible order (filter change, snapshot)."""
        store = fleet_app(self).store
        t = self.table
        keep = self._cursor_id()
        t.clear()
        self._refresh_headers()
        self._cells = {}
        for row in store.visible_rows():
            cells = self._row_cells(row)
            self._cells[row.id] = cells
            t.add_row(*cells, key=row.id)
        self._restore_cursor(keep)
        fleet_app(self).refresh_status()

    def show_diff(self, diff: Diff) -> None:
        """Apply a store diff: touch only the rows and cells that changed."""
        if diff.empty:
            fleet_app(self).refresh_status()
            return
        if diff.reset or len(diff.removed) > REBUILD_REMOVALS:
            self.rebuild()
            return
        store = fleet_app(self).store
        t = self.table
        keep = self._cursor_id()
        for device_id in diff.removed:
            if device_id in self._cells:
                t.remove_row(device_id)
                del self._cells[device_id]
        for device_id in diff.added:
            row = store.get(device_id)
            if row is None or device_id in self._cells:
                continue
            cells = self._row_cells(row)
            self._cells[device_id] = cells
            t.add_row(*cells, key=device_id)
        for device_id in diff.updated:
            self._update_row(device_id)
        if diff.added or diff.reordered:
            self._sort_table()
            self._restore_cursor(keep)
        fleet_app(self).refresh_status()

    def _update_row(self, device_id: str) -> None:
        row = fleet_app(self).store.get(device_id)
        old = self._cells.get(device_id)
        if row is None or old is None:
            return
        new = self._row_cells(row)
        if new == old:
            return
        self._cells[device_id] = new
        t = self.table
        keys = ["mark", *(c.key for c in COLUMNS)]
        for key, a, b in zip(keys, old, new, strict=True):
            if a != b:
                t.update_cell(device_id, key, b)

    def _sort_table(self) -> None:
        order = rank(fleet_app(self).store.visible)
        last = len(order)
        self.table.sort("id", key=lambda device_id: order.get(str(device_id), last))

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

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter" and self._apply_filter(event.value, quiet=False):
            self.set_focus(self.table)
            if not event.value.strip():
                event.input.display = False

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
        keep = self._cursor_id()
        fleet_app(self).store.set_sort(key)
        # Labels before the sort: the table caches rendered lines per update count,
        # and sort() is what bumps it.
        self._refresh_headers()
        self._sort_table()
        self._restore_cursor(keep)

    def action_pause(self) -> None:
        app = fleet_app(self)
        if app.store.paused:
            self.show_diff(app.store.resume())
        else:
            app.store.pause()
        app.refresh_status()

    def action_mark(self) -> None:
        device_id = self._cursor_id()
        if device_id is None:
            return
        fleet_app(self).store.toggle_mark(device_id)
        self._update_row(device_id)
        t = self.table
        if t.cursor_row < t.row_count - 1:
            t.move_cursor(row=t.cursor_row + 1, animate=False)
        fleet_app(self).refresh_status()

    def action_mark_all(self) -> None:
        fleet_app(self).store.mark_visible()
        for device_id in list(self._cells):
            self._update_row(device_id)
        fleet_app(self).refresh_status()

    def action_unmark_all(self) -> None:
        store = fleet_app(self).store
        marked = list(store.marks)
        store.clear_marks()
        for device_id in marked:
            self._update_row(device_id)
        fleet_app(self).refresh_status()

    def action_push(self) -> None:
        app = fleet_app(self)
        app.switch_mode("bundles")
        n = len(app.store.marked())
        target = f"the {n} marked robot(s)" if n else "a label selector"
        self.notify(f"Choose a bundle and press p to push it to {target}.")

    def action_export(self, fmt: str) -> None:
        fleet_app(self).export_view("json" if fmt == "json" else "csv")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            fleet_app(self).open_device(event.row_key.value)
