"""Batched writes for MQTT ingest: telemetry, events and presence, many per transaction.

The store's one-message methods (`Store.record_telemetry`, `record_event`,
`set_online`) commit one message per transaction, which caps ingest at a few hundred
messages per second (each commit is an fsync on SQLite, a round trip on PostgreSQL).
The functions here write a whole ingest batch in one transaction with the same rules:

- exactly once per (device, sequence): the key is inserted with ON CONFLICT DO
  NOTHING ... RETURNING, and only what this transaction really added has effects, so
  two ingest replicas racing on one redelivered message store it once;
- only from registered, unrevoked devices (one read for the whole batch);
- the device row changes once per device, with the same outcome as the messages
  written one by one in batch order: health = the newest telemetry point, update
  state = the last stored update event, presence = the last state;
- ``updated_at`` stamped so `WatchFleet` sees the change, listeners notified after
  the commit;
- rows are locked in one order (device rows in id order, keys sorted), so replicas
  writing batches that share devices cannot deadlock. Telemetry on PostgreSQL locks
  the device rows for its update only as its last step (until then they are only kept
  from being deleted), so replicas queue for that step alone; a device revoked in
  between makes the batch fail as a conflict, and the caller writes it row by row.

On PostgreSQL a telemetry batch costs a handful of statements whatever its size: the
batch keys in one ``INSERT ... SELECT FROM unnest(...)``, the points in one ``COPY``
whose text is built in one join (measured fastest: ``bench/telemetry_write.py``), the
device rows in one ``UPDATE ... FROM unnest(...)``; the arrays go in binary. SQLite
gets one executemany per step. ``bench/ingest_profile.py`` measures the cost per message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from cloud.store._store import Store, TelemetryRecord
from cloud.store.errors import ConflictError
from cloud.store.models import Device, Event, TelemetryBatch, TelemetryPoint, table
from cloud.store.telemetry import health_summary, telemetry_update_state
from cloud.store.updates import EventRecord

__all__ = [
    "PresenceWrite",
    "TelemetryWrite",
    "copy_points",
    "record_events_many",
    "record_telemetry_many",
    "set_online_many",
]

D = table(Device)
E = table(Event)
TB = table(TelemetryBatch)
T = table(TelemetryPoint)

TelemetryWrite = tuple[str, int, Sequence[TelemetryRecord], dt.datetime]
"""(device id, sequence, points, received at)."""
PresenceWrite = tuple[str, bool, dt.datetime, str]
"""(device id, online, at, runtime version or "")."""

POINT_COLUMNS = (
    "device_id",
    "at",
    "sequence",
    "loop_p50_ms",
    "loop_p99_ms",
    "deadline_miss_rate",
    "safety_interventions",
    "cpu_percent",
    "memory_percent",
    "temperature_c",
    "extra",
)


def _insert(conn: Connection, t: sa.Table) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(t)


_HELD = (D.c.health["at"].as_string(), D.c.update_state)
_ACCEPTED_PG = (
    "SELECT id{columns} FROM devices WHERE id = ANY(%b::varchar[]) AND revoked IS false "
    "ORDER BY id FOR {lock}"
)


def _accepted(
    conn: Connection, devices: set[str], *, held: bool = False, for_update: bool = True
) -> dict[str, Any]:
    """The registered, unrevoked devices among `devices`; with `held`, each one's
    stored health time and update state (only what the writer needs of the row).

    The rows this transaction will update are locked, all at once in id order, so
    replicas writing batches that share devices queue instead of deadlocking.
    `for_update` False: they are only kept from being deleted (``FOR KEY SHARE``,
    which neither waits for nor holds up another transaction updating them)."""
    ids = sorted(devices)
    if conn.dialect.name == "postgresql":  # one array parameter; no statement to build
        sql = _ACCEPTED_PG.format(
            columns=", health ->> 'at', update_state" if held else "",
            lock="NO KEY UPDATE" if for_update else "KEY SHARE",
        )
        rows = conn.exec_driver_sql(sql, (ids,)).all()
    else:
        columns = _HELD if held else ()
        q = sa.select(D.c.id, *columns).where(D.c.id.in_(ids), D.c.revoked.is_(False))
        rows = conn.execute(q.order_by(D.c.id).with_for_update(key_share=True)).all()
    return {str(r[0]): tuple(r[1:]) for r in rows}


def _point_row(device: str, seq: int, p: TelemetryRecord) -> dict[str, Any]:
    return {
        "device_id": device,
        "at": p.at,
        "sequence": seq,
        "loop_p50_ms": p.loop_p50_ms,
        "loop_p99_ms": p.loop_p99_ms,
        "deadline_miss_rate": p.deadline_miss_rate,
        "safety_interventions": p.safety_interventions,
        "cpu_percent": p.cpu_percent,
        "memory_percent": p.memory_percent,
        "temperature_c": p.temperature_c,
        "extra": p.extra,
    }


def copy_points(conn: Connection, points: Sequence[dict[str, Any]]) -> None:
    """Append telemetry points: ``COPY`` on PostgreSQL, one executemany elsewhere.

    Runs on `conn`'s own transaction, so the points commit with the rest of the batch.
    """
    if not points:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(T.insert(), list(points))
        return
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY telemetry ({', '.join(POINT_COLUMNS)}) FROM STDIN") as copy:
            for row in points:
                extra = row["extra"]
                copy.write_row(
                    [
                        *(row[c] for c in POINT_COLUMNS[:-1]),
                        None if extra is None else json.dumps(extra),
                    ]
                )
    finally:
        cursor.close()


_COPY_SPECIAL = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_dumps = json.JSONEncoder().encode  # what json.dumps(x) does, minus its argument checks


def _copy_field(text: str) -> str:
    """`text` as one field of COPY's text format (backslash, tab and newlines escaped)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_SPECIAL)
    return text


def copy_records(conn: Connection, points: Sequence[tuple[str, int, TelemetryRecord]]) -> None:
    """Append (device, sequence, point) rows; on PostgreSQL one ``COPY`` whose text is
    built in one join (no per-row adaptation), elsewhere :func:`copy_points`.

    The same rows as :func:`copy_points` given :func:`_point_row` of each."""
    if not points:
        return
    if conn.dialect.name != "postgresql":
        copy_points(conn, [_point_row(d, q, p) for d, q, p in points])
        return
    names: dict[str, str] = {}
    lines = []
    for device, seq, p in points:
        name = names.get(device)
        if name is None:
            name = names[device] = _copy_field(device)
        extra = "\\N" if p.extra is None else _copy_field(_dumps(p.extra))
        lines.append(
            f"{name}\t{p.at.isoformat()}\t{int(seq)}\t{float(p.loop_p50_ms)!r}\t"
            f"{float(p.loop_p99_ms)!r}\t{float(p.deadline_miss_rate)!r}\t"
            f"{int(p.safety_interventions)}\t{float(p.cpu_percent)!r}\t"
            f"{float(p.memory_percent)!r}\t{float(p.temperature_c)!r}\t{extra}\n"
        )
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY telemetry ({', '.join(POINT_COLUMNS)}) FROM STDIN") as copy:
            copy.write("".join(lines))
    finally:
        cursor.close()


@dataclass
class _Health:
    """A device's health as the batch's messages, applied in order, leave it."""

    held_at: str
    """The stored health's time (ISO 8601), then that of each newer message's."""
    update_state: str
    point: TelemetryRecord | None = None
    """The newest point written, if any message was fresh."""
    active_bundle: dict[str, Any] | None = None

    def apply(self, points: Sequence[TelemetryRecord]) -> None:
        """One stored message, as `Store.record_telemetry` applies it alone: its newest
        point (the first of equal ones) becomes the health unless the held one is
        newer (spool replays arrive out of order)."""
        p = max(points, key=_at)
        at = p.at.isoformat()
        if self.held_at and self.held_at > at:
            return
        self.held_at = at
        self.point = p
        self.update_state = telemetry_update_state(self.update_state, p.update_state)
        if p.active_bundle:
            self.active_bundle = dict(p.active_bundle)


def _at(p: TelemetryRecord) -> dt.datetime:
    return p.at


def record_telemetry_many(
    store: Store, writes: Sequence[TelemetryWrite], future_limit: dt.datetime | None = None
) -> list[bool]:
    """Store each batch once; result[i] is False for a duplicate or an unaccepted device.

    A stored health summary dated after `future_limit` (a clock far ahead, from before
    ingest clamped such stamps) is treated as stale, so it cannot stay "newest" for ever.
    """
    if not writes:
        return []
    limit = future_limit.isoformat() if future_limit is not None else None
    result = [False] * len(writes)
    # PostgreSQL: the device rows are locked for their update only at the end, so the
    # replicas, whose batches share devices, queue for that last step alone, not for
    # the whole transaction (key inserts and points included).
    late_lock = store.engine.dialect.name == "postgresql"
    with store._tx() as conn:
        devices = {w[0] for w in writes}
        if late_lock:
            current = _accepted(conn, devices, for_update=False)
        else:
            current = _accepted(conn, devices, held=True)
        candidates: dict[tuple[str, int], int] = {}
        for i, (device, seq, _pts, _rcv) in enumerate(writes):
            if device in current and (device, seq) not in candidates:
                candidates[(device, seq)] = i  # first of duplicates inside this batch
        if not candidates:
            return result
        keys = [(d, q, writes[i][3]) for (d, q), i in sorted(candidates.items())]
        added = _add_batches(conn, keys)
        points: list[tuple[str, int, TelemetryRecord]] = []
        stored: list[tuple[str, Sequence[TelemetryRecord]]] = []
        last_seen: dict[str, dt.datetime] = {}
        for key, i in candidates.items():  # batch order
            if key not in added:
                continue
            result[i] = True
            device, seq, pts, received = writes[i]
            if pts:
                points += [(device, seq, p) for p in pts]
                stored.append((device, pts))
            seen = last_seen.get(device)
            last_seen[device] = received if seen is None or received > seen else seen
        copy_records(conn, points)
        if not last_seen:
            return result
        if late_lock:  # now locked, in id order; what they hold now is what counts
            current = _accepted(conn, set(last_seen), held=True)
            if len(current) != len(last_seen):
                # Revoked since the check above: the caller writes the batch again, one
                # message at a time, and that device's are refused.
                raise ConflictError("a device was revoked while its telemetry was written")
        health: dict[str, _Health] = {}
        for device, pts in stored:
            h = health.get(device)
            if h is None:
                held_at, update_state = current[device]
                held = str(held_at or "")
                if limit is not None and held > limit:
                    held = ""
                h = health[device] = _Health(held, str(update_state or ""))
            h.apply(pts)
        _update_devices(conn, health, last_seen)
    store._notify(list(last_seen))
    return result


_ADD_BATCHES_PG = (
    # Answers only the keys it did not add (usually none), not every key it added.
    "WITH k AS MATERIALIZED (SELECT * FROM unnest(%b::varchar[], %b::bigint[], "
    "%b::timestamptz[]) AS k(device_id, sequence, received_at)), "
    "ins AS (INSERT INTO telemetry_batches (device_id, sequence, received_at) "
    "SELECT * FROM k ON CONFLICT (device_id, sequence) DO NOTHING "
    "RETURNING device_id, sequence) "
    "SELECT k.device_id, k.sequence FROM k WHERE NOT EXISTS (SELECT 1 FROM ins "
    "WHERE ins.device_id = k.device_id AND ins.sequence = k.sequence)"
)


def _add_batches(
    conn: Connection, keys: Sequence[tuple[str, int, dt.datetime]]
) -> set[tuple[str, int]]:
    """Insert the (device, sequence, received at) batch keys, in this order; the keys this
    transaction really added (not those already stored). PostgreSQL: one statement, its
    arrays sent in binary (text arrays cost psycopg a regular expression per element)."""
    if conn.dialect.name == "postgresql":
        cols = tuple(map(list, zip(*keys, strict=True)))
        kept = {(str(r[0]), int(r[1])) for r in conn.exec_driver_sql(_ADD_BATCHES_PG, cols).all()}
        return {(d, q) for d, q, _ in keys} - kept
    rows = conn.execute(
        _insert(conn, TB)
        .on_conflict_do_nothing(index_elements=[TB.c.device_id, TB.c.sequence])
        .returning(TB.c.device_id, TB.c.sequence),
        [{"device_id": d, "sequence": q, "received_at": r} for d, q, r in keys],
    )
    return {(str(r[0]), int(r[1])) for r in rows}


_UPDATE_DEVICES_PG = (
    "UPDATE devices AS d SET last_seen = v.seen, updated_at = %b, "
    "health = CASE WHEN v.fresh THEN v.health::json ELSE d.health END, "
    "update_state = CASE WHEN v.fresh THEN v.state ELSE d.update_state END, "
    "active_bundle = CASE WHEN v.active IS NULL THEN d.active_bundle ELSE v.active::json END "
    "FROM unnest(%b::varchar[], %b::timestamptz[], %b::bool[], %b::text[], %b::varchar[], "
    "%b::text[]) AS v(id, seen, fresh, health, state, active) WHERE d.id = v.id"
)


def _update_devices(
    conn: Connection, health: dict[str, _Health], last_seen: dict[str, dt.datetime]
) -> None:
    """Each device's row once: last seen and, where a message was fresh, health, update
    state and active bundle. PostgreSQL: one statement (the rows are locked already, by
    `_accepted`, in id order); elsewhere one executemany per set of columns."""
    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    for device, seen in sorted(last_seen.items()):
        row: dict[str, Any] = {"b_id": device, "b_seen": seen}
        h = health.get(device)
        if h is not None and h.point is not None:
            row["b_health"] = health_summary(h.point)
            row["b_state"] = h.update_state
            if h.active_bundle is not None:
                row["b_active"] = h.active_bundle
        rows.append(row)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            _UPDATE_DEVICES_PG,
            (
                now,
                [r["b_id"] for r in rows],
                [r["b_seen"] for r in rows],
                ["b_health" in r for r in rows],
                [_dumps(r["b_health"]) if "b_health" in r else None for r in rows],
                [r.get("b_state") for r in rows],
                [_dumps(r["b_active"]) if "b_active" in r else None for r in rows],
            ),
        )
        return
    groups: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(("b_health" in row, "b_active" in row), []).append(row)
    for (fresh, active), group in sorted(groups.items()):
        values: dict[str, Any] = {"last_seen": sa.bindparam("b_seen"), "updated_at": now}
        if fresh:
            values["health"] = sa.bindparam("b_health", type_=D.c.health.type)
            values["update_state"] = sa.bindparam("b_state")
        if active:
            values["active_bundle"] = sa.bindparam("b_active", type_=D.c.active_bundle.type)
        conn.execute(D.update().where(D.c.id == sa.bindparam("b_id")).values(**values), group)


def record_events_many(store: Store, events: Sequence[EventRecord]) -> list[bool]:
    """Store each event once per (device, sequence); result[i] False = not stored.

    An ``update`` event with a state moves its device's update state, reason and
    detail; of several in one batch the last stored one wins, as if written one by one.
    """
    if not events:
        return []
    result = [False] * len(events)
    with store._tx() as conn:
        current = _accepted(conn, {e.device_id for e in events})
        candidates: dict[tuple[str, int], int] = {}
        for i, ev in enumerate(events):
            if ev.device_id in current and (ev.device_id, ev.sequence) not in candidates:
                candidates[(ev.device_id, ev.sequence)] = i
        if not candidates:
            return result
        added = {
            (str(r[0]), int(r[1]))
            for r in conn.execute(
                _insert(conn, E)
                .on_conflict_do_nothing(index_elements=[E.c.device_id, E.c.sequence])
                .returning(E.c.device_id, E.c.sequence),
                [
                    {
                        "device_id": ev.device_id,
                        "sequence": ev.sequence,
                        "at": ev.at,
                        "kind": ev.kind,
                        "state": ev.state,
                        "reason_code": ev.reason_code,
                        "detail": ev.detail,
                        "bundle": ev.bundle,
                    }
                    for ev in (events[i] for _, i in sorted(candidates.items()))
                ],
            )
        }
        last_update: dict[str, EventRecord] = {}
        for key, i in sorted(candidates.items(), key=lambda kv: kv[1]):
            if key not in added:
                continue
            result[i] = True
            ev = events[i]
            if ev.kind == "update" and ev.state:
                last_update[ev.device_id] = ev  # batch order: the last one wins
        if last_update:
            now = dt.datetime.now(dt.UTC)
            conn.execute(
                D.update()
                .where(D.c.id == sa.bindparam("b_id"))
                .values(
                    update_state=sa.bindparam("b_state"),
                    update_reason=sa.bindparam("b_reason"),
                    update_detail=sa.bindparam("b_detail"),
                    last_seen=now,
                    updated_at=now,
                ),
                [
                    {
                        "b_id": d,
                        "b_state": ev.state,
                        "b_reason": ev.reason_code,
                        "b_detail": ev.detail,
                    }
                    for d, ev in sorted(last_update.items())
                ],
            )
    store._notify(sorted({events[i].device_id for i, ok in enumerate(result) if ok}))
    return result


def set_online_many(store: Store, writes: Sequence[PresenceWrite]) -> list[bool]:
    """Record presence for many devices; result[i] False for an unknown or revoked device.

    Of several messages from one device in the batch the last one wins (its retained
    state is the newest), keeping the newest runtime version any of them reported.
    A revoked robot's retained "online" does not bring it back.
    """
    if not writes:
        return []
    with store._tx() as conn:
        current = _accepted(conn, {w[0] for w in writes})
        last: dict[str, PresenceWrite] = {}
        for w in writes:
            if w[0] in current:
                # The last message wins; a runtime version sent earlier in the batch stays.
                version = w[3] or (last[w[0]][3] if w[0] in last else "")
                last[w[0]] = (w[0], w[1], w[2], version)
        if last:
            now = dt.datetime.now(dt.UTC)
            stmt = D.update().where(D.c.id == sa.bindparam("b_id"))
            plain = [w for _, w in sorted(last.items()) if not w[3]]
            versioned = [w for _, w in sorted(last.items()) if w[3]]
            values: dict[str, Any] = {
                "online": sa.bindparam("b_online"),
                "last_seen": sa.bindparam("b_at"),
                "updated_at": now,
            }
            groups: tuple[tuple[list[PresenceWrite], dict[str, Any]], ...] = (
                (plain, {}),
                (versioned, {"runtime_version": sa.bindparam("b_rv")}),
            )
            for group, extra in groups:
                if group:
                    conn.execute(
                        stmt.values(**values, **extra),
                        [
                            {"b_id": d, "b_online": o, "b_at": at, "b_rv": rv}
                            for d, o, at, rv in group
                        ],
                    )
    store._notify(sorted(last))
    return [w[0] in current for w in writes]
