"""A device as the console shows it, and the fleet table's columns (key, header,
sort key, cell text).

Pure Python: the watch worker builds `DeviceRow`s off the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "COLUMNS",
    "COLUMN_BY_KEY",
    "COLUMN_INDEX",
    "Column",
    "DeviceRow",
    "bundle_label",
    "temperature_text",
]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as the console shows it (converted from the admin API's `Device`)."""

    id: str
    labels: tuple[tuple[str, str], ...] = ()
    online: bool = False
    last_seen: float = 0.0  # unix seconds, 0 = never
    bundle_name: str = ""
    bundle_version: str = ""
    bundle_sequence: int = 0
    policy_sha256: str = ""
    update_state: str = ""
    update_reason: str = ""
    update_detail: str = ""  # the robot's words for update_reason
    loop_p99_ms: float = 0.0
    deadline_miss_rate: float = 0.0
    safety_interventions: int = 0
    cpu_percent: float = 0.0
    temperature_c: float = 0.0
    revoked: bool = False
    runtime_version: str = ""
    # Derived once per row (in the watch reader thread, off the UI thread) so filtering
    # and sorting 10,000 rows does no per-row string or tuple work on the UI thread.
    search: str = field(init=False, repr=False, compare=False)
    sort_values: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = "\x00".join([self.id, *(v for _, v in self.labels)]).lower()
        object.__setattr__(self, "search", text)
        object.__setattr__(self, "sort_values", tuple(c.sort_key(self) for c in COLUMNS))

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["search"], data["sort_values"]
        data["labels"] = dict(self.labels)
        return data


def bundle_label(name: str, version: str) -> str:
    """`name@version`; just the name while the version is not known yet (a device that
    was hinted a bundle but has not reported one); "" without a name."""
    if not name:
        return ""
    return f"{name}@{version}" if version else name


def temperature_text(celsius: float, unit: str = "") -> str:
    """The temperature, or "—" where the robot has no readable sensor (it reports 0.0)."""
    return "—" if celsius == 0.0 else f"{celsius:.1f}{unit}"


def _fmt_time(ts: float) -> str:
    if ts <= 0:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _fmt_status(row: DeviceRow) -> str:
    if row.revoked:
        return "revoked"
    return "● online" if row.online else f"○ off {_fmt_time(row.last_seen)}"


@dataclass(frozen=True)
class Column:
    """A fleet table column: its key, header, sort key and cell text."""

    key: str
    title: str
    sort_key: Callable[[DeviceRow], Any]
    text: Callable[[DeviceRow], str]
    export: Callable[[DeviceRow], Any]
    # Fixed width in cells: the table never measures 10,000 rows to size a column.
    width: int = 8


COLUMNS: tuple[Column, ...] = (
    Column("id", "Device", lambda r: r.id, lambda r: r.id, lambda r: r.id, width=14),
    Column(
        "labels",
        "Labels",
        lambda r: r.labels,
        lambda r: ",".join(f"{k}={v}" for k, v in r.labels),
        lambda r: ",".join(f"{k}={v}" for k, v in r.labels),
        width=18,
    ),
    Column(
        "status",
        "Status",
        # online first, then most recently seen
        lambda r: (not r.online, -r.last_seen),
        _fmt_status,
        lambda r: "online" if r.online else "offline",
        width=16,
    ),
    Column(
        "bundle",
        "Bundle",
        lambda r: (r.bundle_name, r.bundle_sequence),
        lambda r: f"{r.bundle_name} {r.bundle_version}".strip() or "—",
        lambda r: bundle_label(r.bundle_name, r.bundle_version),
        width=16,
    ),
    Column(
        "update",
        "Update",
        lambda r: (r.update_state, r.update_reason),
        lambda r: r.update_state + (f" ({r.update_reason})" if r.update_reason else ""),
        lambda r: r.update_state,
        width=18,
    ),
    Column(
        "p99",
        "p99 ms",
        lambda r: r.loop_p99_ms,
        lambda r: f"{r.loop_p99_ms:.2f}",
        lambda r: r.loop_p99_ms,
        width=9,
    ),
    Column(
        "miss",
        "Miss %",
        lambda r: r.deadline_miss_rate,
        lambda r: f"{100 * r.deadline_miss_rate:.2f}",
        lambda r: r.deadline_miss_rate,
        width=9,
    ),
    Column(
        "interventions",
        "Safety",
        lambda r: r.safety_interventions,
        lambda r: str(r.safety_interventions),
        lambda r: r.safety_interventions,
        width=8,
    ),
    Column(
        "cpu",
        "CPU %",
        lambda r: r.cpu_percent,
        lambda r: f"{r.cpu_percent:.0f}",
        lambda r: r.cpu_percent,
        width=7,
    ),
    Column(
        "temp",
        "Temp °C",
        lambda r: r.temperature_c,
        lambda r: temperature_text(r.temperature_c),
        lambda r: r.temperature_c,
        width=9,
    ),
)
COLUMN_BY_KEY: dict[str, Column] = {c.key: c for c in COLUMNS}
COLUMN_INDEX: dict[str, int] = {c.key: n for n, c in enumerate(COLUMNS)}
