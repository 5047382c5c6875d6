"""The fleet data store behind the fleet screen: rows, query, sort order and marks.

Pure Python (no Textual, no gRPC): the watch worker turns wire events into
`DeviceRow`s, the store applies them and answers with a `Diff`, and the table widget
touches only the rows the diff names. Filtering and sorting live here, not in the
widget (a Textual DataTable cannot hide rows and slows at thousands of rows).

Rows and columns: `tui.rows`; the filter language: `tui.query`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from tui.query import Query, QueryError, parse_query
from tui.rows import COLUMN_BY_KEY, COLUMN_INDEX, COLUMNS, DeviceRow, bundle_label

__all__ = ["Diff", "FleetStore", "HistoryPoint", "UpdateEvent"]

HISTORY_POINTS = 120


@dataclass
class Diff:
    """What changed in the visible (filtered, sorted) view after an update."""

    updated: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reordered: bool = False
    reset: bool = False

    @property
    def empty(self) -> bool:
        return not (self.updated or self.added or self.removed or self.reordered or self.reset)


@dataclass(frozen=True)
class HistoryPoint:
    at: float
    loop_p99_ms: float
    deadline_miss_rate: float
    safety_interventions: int


@dataclass(frozen=True)
class UpdateEvent:
    at: float
    state: str
    reason: str
    bundle: str


class FleetStore:
    """Devices by id, the active query and sort, the visible order and the marks."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: dict[str, DeviceRow] = {}
        self._query = Query()
        self.sort_key = "id"
        self.sort_reverse = False
        self._visible: list[str] = []
        self._visible_set: set[str] = set()
        self._rank: dict[str, int] | None = None
        self._snapshot_at = 0.0
        self.marks: set[str] = set()
        self.paused = False
        self._pending: list[DeviceRow | str] = []
        # Seen locally from the stream: the device screen's fallback when the plane
        # keeps no history (GetDeviceHistory unimplemented).
        self.history: dict[str, deque[HistoryPoint]] = {}
        self.updates: dict[str, deque[UpdateEvent]] = {}

    # ---- reading -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def get(self, device_id: str) -> DeviceRow | None:
        return self._rows.get(device_id)

    @property
    def query(self) -> Query:
        return self._query

    @property
    def visible(self) -> list[str]:
        """Ids of the devices that match the query, in display order."""
        return self._visible

    def all_rows(self) -> list[DeviceRow]:
        return list(self._rows.values())

    def index_of(self, device_id: str) -> int | None:
        """Position of a device in the visible order, or None if it is not shown."""
        if device_id not in self._visible_set:
            return None
        if self._rank is None:
            self._rank = {i: n for n, i in enumerate(self._visible)}
        return self._rank.get(device_id)

    def visible_rows(self) -> list[DeviceRow]:
        return [self._rows[i] for i in self._visible]

    def counts(self) -> dict[str, int]:
        online = sum(1 for r in self._rows.values() if r.online)
        return {
            "total": len(self._rows),
            "online": online,
            "visible": len(self._visible),
            "marked": len(self.marked()),
            "pending": len(self._pending),
        }

    def marked(self) -> list[str]:
        """Marked devices that still exist, in display order where visible."""
        order = [i for i in self._visible if i in self.marks]
        rest = sorted(i for i in self.marks if i in self._rows and i not in self._visible_set)
        return order + rest

    # ---- writing -------------------------------------------------------------
    def replace_all(self, rows: Iterable[DeviceRow]) -> Diff:
        """A fresh snapshot (first connect or reconnect): drop devices not in it."""
        self._snapshot_at = self._clock()
        old_rows, self._rows = self._rows, {}
        for row in rows:
            # History starts with the first change seen (or continues across a
            # reconnect): recording 10,000 snapshot points up front costs the UI thread.
            if row.id in self.history:
                self._record(row, old_rows.get(row.id))
            self._rows[row.id] = row
        self.marks &= set(self._rows)
        self._pending.clear()
        self._recompute()
        return Diff(reset=True)

    def apply(self, changes: Iterable[DeviceRow | str]) -> Diff:
        """Apply upserts (`DeviceRow`) and removals (device id `str`) in order.

        While paused the changes are held back and applied by `resume()`.
        """
        if self.paused:
            self._pending.extend(changes)
            return Diff()
        sort_index = COLUMN_INDEX[self.sort_key]
        updated: dict[str, None] = {}
        added: dict[str, None] = {}
        removed: dict[str, None] = {}
        reordered = False
        for change in changes:
            if isinstance(change, str):
                if self._rows.pop(change, None) is not None and change in self._visible_set:
                    self._visible_set.discard(change)
                    added.pop(change, None)
                    updated.pop(change, None)
                    removed[change] = None
                self.marks.discard(change)
                continue
            row = change
            old = self._rows.get(row.id)
            self._record(row, old)
            self._rows[row.id] = row
            was = row.id in self._visible_set
            now = self._query.matches(row)
            if was and now:
                if row.id not in added:
                    updated[row.id] = None
                if old is not None and old.sort_values[sort_index] != row.sort_values[sort_index]:
                    reordered = True
            elif now:
                self._visible_set.add(row.id)
                if row.id in removed:
                    del removed[row.id]
                    updated[row.id] = None
                else:
                    added[row.id] = None
                reordered = True
            elif was:
                self._visible_set.discard(row.id)
                if row.id in added:
                    del added[row.id]
                else:
                    updated.pop(row.id, None)
                    removed[row.id] = None
        if added or removed or reordered:
            self._reorder()
        return Diff(list(updated), list(added), list(removed), reordered)

    def set_query(self, text: str) -> Diff:
        """Filter by `text` (see the module docstring); raises `QueryError`, changing nothing."""
        query = parse_query(text)
        self._query = query
        self._recompute()
        return Diff(reset=True)

    def set_sort(self, key: str, reverse: bool | None = None) -> Diff:
        """Sort by column `key`; choosing the current column again flips the direction."""
        if key not in COLUMN_BY_KEY:
            raise QueryError(f"no column {key!r}; columns: {', '.join(COLUMN_BY_KEY)}")
        if reverse is None:
            reverse = not self.sort_reverse if key == self.sort_key else False
        self.sort_key, self.sort_reverse = key, reverse
        self._reorder()
        return Diff(reordered=True)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> Diff:
        self.paused = False
        pending, self._pending = self._pending, []
        return self.apply(pending)

    def toggle_mark(self, device_id: str) -> bool:
        """Mark or unmark one device; returns whether it is now marked."""
        if device_id in self.marks:
            self.marks.discard(device_id)
            return False
        if device_id in self._rows:
            self.marks.add(device_id)
            return True
        return False

    def mark_visible(self) -> None:
        self.marks.update(self._visible)

    def clear_marks(self) -> None:
        self.marks.clear()

    # ---- export --------------------------------------------------------------
    def export(self, fmt: Literal["csv", "json"]) -> str:
        """The current filtered, sorted view as CSV or JSON text."""
        rows = self.visible_rows()
        if fmt == "json":
            return json.dumps(
                {
                    "query": self._query.text,
                    "sort": {"column": self.sort_key, "reverse": self.sort_reverse},
                    "devices": [r.to_json() for r in rows],
                },
                indent=2,
            )
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([c.key for c in COLUMNS])
        for r in rows:
            writer.writerow([c.export(r) for c in COLUMNS])
        return buf.getvalue()

    # ---- internals -----------------------------------------------------------
    def _record(self, row: DeviceRow, old: DeviceRow | None = None) -> None:
        now = self._clock()
        if row.id not in self.history and old is not None:
            # first change of a device known from the snapshot: its snapshot state first
            self._append_history(old, self._snapshot_at, None)
        self._append_history(row, now, old)

    def _append_history(self, row: DeviceRow, at: float, old: DeviceRow | None) -> None:
        hist = self.history.setdefault(row.id, deque(maxlen=HISTORY_POINTS))
        hist.append(
            HistoryPoint(at, row.loop_p99_ms, row.deadline_miss_rate, row.safety_interventions)
        )
        changed = old is None or (old.update_state, old.update_reason) != (
            row.update_state,
            row.update_reason,
        )
        if changed and row.update_state:
            ups = self.updates.setdefault(row.id, deque(maxlen=HISTORY_POINTS))
            bundle = bundle_label(row.bundle_name, row.bundle_version)
            ups.append(UpdateEvent(at, row.update_state, row.update_reason, bundle))

    def _recompute(self) -> None:
        if not self._query.terms:
            self._visible_set = set(self._rows)
        else:
            match = self._query.matches
            self._visible_set = {i for i, r in self._rows.items() if match(r)}
        self._reorder()

    def _reorder(self) -> None:
        index = COLUMN_INDEX[self.sort_key]
        rows = self._rows
        self._rank = None
        # Sort by id, then (stable) by the column: equal values stay in id order.
        ids = sorted(self._visible_set, reverse=self.sort_reverse and index == 0)
        if index != 0:  # column 0 is the id itself
            ids.sort(key=lambda i: rows[i].sort_values[index], reverse=self.sort_reverse)
        self._visible = ids
