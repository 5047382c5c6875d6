"""Telemetry: batches of points from each device, stored exactly once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloud.store import telemetry_partitions as partitions
from cloud.store._base import StoreBase, as_utc, utcnow
from cloud.store.errors import ConflictError
from cloud.store.models import Device, TelemetryBatch, TelemetryPoint, table
from cloud.store.telemetry_partitions import retention_start
from protos.lifecycle import ENDED_STATES, UpdateState

__all__ = [
    "RetentionResult",
    "TelemetryQueries",
    "TelemetryRecord",
    "health_summary",
    "telemetry_update_state",
]


def health_summary(p: TelemetryRecord) -> dict[str, Any]:
    """The device row's health: the figures of its newest telemetry point."""
    return {
        "at": p.at.isoformat(),
        "loop_p50_ms": p.loop_p50_ms,
        "loop_p99_ms": p.loop_p99_ms,
        "deadline_miss_rate": p.deadline_miss_rate,
        "safety_interventions": p.safety_interventions,
        "cpu_percent": p.cpu_percent,
        "memory_percent": p.memory_percent,
        "temperature_c": p.temperature_c,
    }


def telemetry_update_state(stored: str, sampled: str) -> str:
    """The device's update state after a telemetry sample reporting `sampled`.

    Update events are the authority: an update's last word (``ENDED_STATES``, set by its
    event with the reason) stays until the next update event, so a sample taken before
    it, replayed late from the robot's spool, cannot turn FAILED back into SHADOWING.
    ``HELD`` is kept the same way: its reason (the lock, the window) comes with its
    event, and a sample taken while shadowing must not pair SHADOWING with it.
    """
    if not sampled or stored in ENDED_STATES or stored == UpdateState.HELD:
        return stored
    return sampled


devices_t = table(Device)
batches_t = table(TelemetryBatch)
points_t = table(TelemetryPoint)


@dataclass(frozen=True)
class TelemetryRecord:
    at: dt.datetime
    loop_p50_ms: float = 0.0
    loop_p99_ms: float = 0.0
    deadline_miss_rate: float = 0.0
    safety_interventions: int = 0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    temperature_c: float = 0.0
    extra: dict[str, Any] | None = None
    update_state: str = ""
    active_bundle: dict[str, Any] | None = None


class TelemetryQueries(StoreBase):
    """Reads and writes of the ``telemetry_points`` and ``telemetry_batches`` tables."""

    def record_telemetry(
        self,
        device_id: str,
        sequence: int,
        points: Sequence[TelemetryRecord],
        received_at: dt.datetime | None = None,
    ) -> bool:
        """Store one MQTT telemetry batch exactly once per (device, sequence).

        Returns False (and writes nothing) for a batch already stored (QoS 1 redelivery)
        and for a device that is not registered or was revoked. Also updates the device's
        last seen, health summary and, if reported, its active bundle and update state.
        """
        received_at = received_at or utcnow()
        try:
            with self._tx() as conn:
                if not self._accepts_data(conn, device_id):
                    return False
                conn.execute(
                    batches_t.insert().values(
                        device_id=device_id, sequence=sequence, received_at=received_at
                    )
                )
                if points:
                    conn.execute(
                        points_t.insert(),
                        [
                            {
                                "device_id": device_id,
                                "at": p.at,
                                "sequence": sequence,
                                "loop_p50_ms": p.loop_p50_ms,
                                "loop_p99_ms": p.loop_p99_ms,
                                "deadline_miss_rate": p.deadline_miss_rate,
                                "safety_interventions": p.safety_interventions,
                                "cpu_percent": p.cpu_percent,
                                "memory_percent": p.memory_percent,
                                "temperature_c": p.temperature_c,
                                "extra": p.extra,
                            }
                            for p in points
                        ],
                    )
                values: dict[str, Any] = {"last_seen": received_at, "updated_at": utcnow()}
                last = max(points, key=lambda p: p.at) if points else None
                row = conn.execute(
                    sa.select(devices_t.c.health, devices_t.c.update_state).where(
                        devices_t.c.id == device_id
                    )
                ).first()
                current, row_state = (row[0], row[1]) if row is not None else (None, "")
                # Batches can arrive out of order (spool replay): health is the newest point.
                if last is not None and not (
                    current and str(current.get("at", "")) > last.at.isoformat()
                ):
                    values["health"] = health_summary(last)
                    state = telemetry_update_state(str(row_state or ""), last.update_state)
                    if state:
                        values["update_state"] = state
                    if last.active_bundle:
                        values["active_bundle"] = dict(last.active_bundle)
                conn.execute(devices_t.update().where(devices_t.c.id == device_id).values(**values))
        except ConflictError:
            return False
        self._notify([device_id])
        return True

    def telemetry(
        self, device_id: str, *, limit: int = 500, since: dt.datetime | None = None
    ) -> list[TelemetryRecord]:
        """The newest `limit` points of a device, returned oldest first."""
        q = points_t.select().where(points_t.c.device_id == device_id)
        if since is not None:
            q = q.where(points_t.c.at >= since)
        q = q.order_by(points_t.c.at.desc(), points_t.c.id.desc()).limit(limit)
        with self._connect() as conn:
            rows = conn.execute(q).fetchall()
        out = []
        for r in reversed(rows):
            m = r._mapping
            out.append(
                TelemetryRecord(
                    at=as_utc(m["at"]),  # type: ignore[arg-type]
                    loop_p50_ms=m["loop_p50_ms"],
                    loop_p99_ms=m["loop_p99_ms"],
                    deadline_miss_rate=m["deadline_miss_rate"],
                    safety_interventions=int(m["safety_interventions"]),
                    cpu_percent=m["cpu_percent"],
                    memory_percent=m["memory_percent"],
                    temperature_c=m["temperature_c"],
                    extra=m["extra"],
                )
            )
        return out

    def telemetry_window(
        self,
        device_ids: Sequence[str],
        start: dt.datetime,
        end: dt.datetime,
        extra_keys: Sequence[str] | None = None,
    ) -> dict[str, list[TelemetryRecord]]:
        """The points of `device_ids` from `start` to `end` (both included), per device,
        oldest first, in one query (a few for thousands of devices). With `extra_keys`,
        each point's ``extra`` holds only those keys, read by the database (a whole
        JSON document decoded per point costs more than the rest of the read)."""
        out: dict[str, list[TelemetryRecord]] = {d: [] for d in device_ids}
        ids = list(out)
        cols: list[Any] = [points_t.c[n] for n in ("device_id", "at", *_WINDOW_FIELDS)]
        if extra_keys is None:
            cols.append(points_t.c.extra)
        else:
            cols += [
                points_t.c.extra[k].as_string().label(f"x_{i}") for i, k in enumerate(extra_keys)
            ]
        with self._connect() as conn:
            for i in range(0, len(ids), _IN_CHUNK):
                q = (
                    sa.select(*cols)
                    .where(points_t.c.device_id.in_(ids[i : i + _IN_CHUNK]))
                    .where(points_t.c.at >= start, points_t.c.at <= end)
                    .order_by(points_t.c.device_id, points_t.c.at, points_t.c.id)
                )
                for m in (r._mapping for r in conn.execute(q)):
                    extra = (
                        m["extra"]
                        if extra_keys is None
                        else {k: _scalar(m[f"x_{j}"]) for j, k in enumerate(extra_keys)}
                    )
                    out[m["device_id"]].append(
                        TelemetryRecord(
                            at=as_utc(m["at"]),  # type: ignore[arg-type]
                            extra=extra,
                            **{n: m[n] for n in _WINDOW_FIELDS},
                        )
                    )
        return out

    def prune_telemetry(self, older_than: dt.datetime) -> RetentionResult:
        """Retention, by whole UTC days: remove the telemetry of the days before the day
        `older_than` falls in (so between one and two days' more than asked stay).

        PostgreSQL drops those days' partitions (cost independent of their size) and
        deletes the default partition's older points; SQLite deletes the rows. Both keep
        exactly the same points. Batch markers (the (device, sequence) de-duplication
        keys) received before the same instant are deleted too.
        """
        start = retention_start(older_than)
        with self._tx() as conn:
            if partitions.is_partitioned(conn):
                dropped = partitions.drop_days_before(conn, start)
                points = None
            else:
                dropped = []
                points = int(conn.execute(points_t.delete().where(points_t.c.at < start)).rowcount)
            conn.execute(batches_t.delete().where(batches_t.c.received_at < start))
        return RetentionResult(start, points, tuple(dropped))

    def prepare_telemetry_days(self, today: dt.date, ahead_days: int = 3) -> list[str]:
        """Create the day partitions from `today` to `ahead_days` ahead (PostgreSQL; a no-op
        on SQLite). Returns the partitions created."""
        with self._tx() as conn:
            if not partitions.is_partitioned(conn):
                return []
            return partitions.ensure_days(conn, today, today + dt.timedelta(days=ahead_days))


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass removed."""

    kept_from: dt.datetime
    """The first instant kept (a UTC midnight)."""
    points: int | None
    """Points deleted row by row (SQLite); None where whole partitions were dropped."""
    partitions: tuple[str, ...]
    """Day partitions dropped (PostgreSQL)."""


_IN_CHUNK = 500  # ids per IN list: far below SQLite's and PostgreSQL's parameter limits
_WINDOW_FIELDS = (
    "loop_p50_ms",
    "loop_p99_ms",
    "deadline_miss_rate",
    "safety_interventions",
    "cpu_percent",
    "memory_percent",
    "temperature_c",
)


def _scalar(value: object) -> object:
    """A JSON scalar read as text by the database (PostgreSQL) back as a number."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value
