"""A virtual table over the fleet store: renders only the rows on screen.

Textual's DataTable keeps its own copy of every row and pays O(rows) to add, remove or
sort them; with 10,000 devices a filter change or a sort took seconds (measured with
bench/tui_fleet.py). This widget keeps no rows at all: line `y` is the store's visible
device at `scroll_y + y - 1`, formatted when drawn. A filter, sort or stream update is a
`refresh()`; drawing costs the same for 10 or 100,000 devices.
"""

from __future__ import annotations

from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tui.rows import COLUMNS, Column
from tui.store import FleetStore

MARK = "●"
PAD = 1  # cells of padding each side of a column


def column_width(col: Column) -> int:
    # room for the title, its sort key and the ▲/▼ indicator
    return max(col.width, len(col.title) + 4)


def _fit(text: str, width: int) -> str:
    if len(text) > width:
        return text[: max(0, width - 1)] + "…"
    return text.ljust(width)


class FleetTable(ScrollView, can_focus=True):
    """Rows are the store's `visible` ids; the cursor follows a device, not a position."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "fleet-table--header",
        "fleet-table--cursor",
        "fleet-table--even",
        "fleet-table--marked",
    }
    DEFAULT_CSS = """
    FleetTable {
        background: $surface;
        color: $foreground;
        & > .fleet-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .fleet-table--cursor { background: $block-cursor-blurred-background; }
        &:focus > .fleet-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        & > .fleet-table--even { background: $surface-darken-1 40%; }
        & > .fleet-table--marked { color: $accent; text-style: bold; }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("right", "scroll_right", "Right", show=False),
        Binding("enter", "select", "Open device", show=False),
    ]

    class Selected(Message):
        """Enter (or a double click) on a row."""

        def __init__(self, device_id: str) -> None:
            super().__init__()
            self.device_id = device_id

    class HeaderClicked(Message):
        """A click on a column header: the screen sorts by it."""

        def __init__(self, column_key: str) -> None:
            super().__init__()
            self.column_key = column_key

    def __init__(self, store: FleetStore, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self.widths = [1, *(column_width(c) for c in COLUMNS)]
        self.total_width = sum(w + 2 * PAD for w in self.widths)
        self.cursor_row = 0
        # the device the cursor is on: after a filter, sort or stream change the cursor
        # moves to wherever that device went
        self._cursor_device: str | None = None
        self.headers: dict[str, Text] = {c.key: Text(c.title) for c in COLUMNS}

    # ---- the public surface the screen (and tests) use --------------------------------
    @property
    def row_count(self) -> int:
        return len(self.store.visible)

    @property
    def cursor_id(self) -> str | None:
        visible = self.store.visible
        return visible[self.cursor_row] if 0 <= self.cursor_row < len(visible) else None

    def cell_text(self, device_id: str, key: str) -> str:
        """What the cell of `device_id` in column `key` shows ("mark" is the mark column)."""
        row = self.store.get(device_id)
        if row is None:
            raise KeyError(device_id)
        if key == "mark":
            return MARK if device_id in self.store.marks else ""
        return next(c for c in COLUMNS if c.key == key).text(row)

    def set_header(self, key: str, label: Text) -> None:
        self.headers[key] = label
        self.refresh()

    def rows_changed(self) -> None:
        """The visible rows changed (filter, sort, stream): follow the cursor's device."""
        n = len(self.store.visible)
        self.virtual_size = Size(self.total_width, n + 1)
        index = self.store.index_of(self._cursor_device) if self._cursor_device else None
        self.move_cursor(self.cursor_row if index is None else index)

    def rows_updated(self, device_ids: list[str]) -> None:
        """Some rows' values changed: redraw only if one of them is on screen."""
        top = int(self.scroll_y)
        shown = self.store.visible[top : top + self.size.height]
        if not device_ids or not shown:
            return
        if len(device_ids) > len(shown) or not set(device_ids).isdisjoint(shown):
            self.refresh()

    def move_cursor(self, row: int) -> None:
        visible = self.store.visible
        self.cursor_row = max(0, min(row, len(visible) - 1))
        self._cursor_device = visible[self.cursor_row] if visible else None
        self._scroll_to_cursor()
        self.refresh()

    # ---- actions -----------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor_row + direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        self.move_cursor(0 if where == 0 else len(self.store.visible) - 1)

    def action_select(self) -> None:
        device_id = self.cursor_id
        if device_id is not None:
            self.post_message(self.Selected(device_id))

    def _scroll_to_cursor(self) -> None:
        body = max(1, self.size.height - 1)  # minus the header line
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + body:
            self.scroll_to(y=self.cursor_row - body + 1, animate=False, immediate=True)

    # ---- drawing -----------------------------------------------------------
    def _line(self, cells: list[str], style: Style, mark_style: Style | None = None) -> Strip:
        segments: list[Segment] = []
        for n, (text, width) in enumerate(zip(cells, self.widths, strict=True)):
            s = mark_style if (n == 0 and mark_style is not None) else style
            segments.append(Segment(" " * PAD + _fit(text, width) + " " * PAD, s))
        return Strip(segments, self.total_width)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            header = self.get_component_rich_style("fleet-table--header")
            segments = [Segment(" " * (self.widths[0] + 2 * PAD), base + header)]
            for col, w in zip(COLUMNS, self.widths[1:], strict=True):
                label = self.headers[col.key].copy()
                label.truncate(w, pad=True)
                label.pad_left(PAD)
                label.pad_right(PAD)
                segments.extend(
                    Segment(seg.text, base + header + (seg.style or Style()))
                    for seg in label.render(self.app.console)
                )
            strip = Strip(segments, self.total_width)
            return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, base)
        index = scroll_y + y - 1
        visible = self.store.visible
        if index >= len(visible):
            return Strip.blank(width, base)
        device_id = visible[index]
        row = self.store.get(device_id)
        if row is None:  # pragma: no cover - the store and its visible list move together
            return Strip.blank(width, base)
        style = base
        if index % 2:
            style += self.get_component_rich_style("fleet-table--even")
        if index == self.cursor_row:
            style += self.get_component_rich_style("fleet-table--cursor")
        marked = device_id in self.store.marks
        cells = [MARK if marked else "", *(c.text(row) for c in COLUMNS)]
        mark_style = style + self.get_component_rich_style("fleet-table--marked")
        strip = self._line(cells, style, mark_style)
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, base)

    def on_resize(self) -> None:
        self._scroll_to_cursor()

    def column_at(self, x: int) -> str | None:
        """The column key under screen column `x` (None for the mark column or past the end)."""
        edge = 0
        for n, w in enumerate(self.widths):
            edge += w + 2 * PAD
            if x + int(self.scroll_x) < edge:
                return None if n == 0 else COLUMNS[n - 1].key
        return None

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            key = self.column_at(event.x)
            if key is not None:
                self.post_message(self.HeaderClicked(key))
            return
        self.move_cursor(int(self.scroll_y) + event.y - 1)
        if event.chain >= 2:
            self.action_select()
