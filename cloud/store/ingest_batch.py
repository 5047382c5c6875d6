"""Batched telemetry writes for MQTT ingest.

`Store.record_telemetry` commits one MQTT batch per transaction, which caps ingest at
a few hundred batches per second (each commit is an fsync on SQLite, a round trip on
PostgreSQL). :func:`record_telemetry_many` writes many batches in one transaction with
the same rules: exactly once per (device, sequence), only from registered, unrevoked
devices, health = the newest point, ``updated_at`` stamped so `WatchFleet` sees it.

Two ingest replicas racing on the same (device, sequence) are safe: the key is
inserted with ON CONFLICT DO NOTHING and only the rows that were really added get
their points written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from cloud.store._store import Store, TelemetryRecord
from cloud.store.models import Device, TelemetryBatch, TelemetryPoint, table
from cloud.store.telemetry import health_summary, telemetry_update_state

__all__ = ["TelemetryWrite", "record_telemetry_many"]

D = table(Device)
TB = table(TelemetryBatch)
T = table(TelemetryPoint)

TelemetryWrite = tuple[str, int, Sequence[TelemetryRecord], dt.datetime]
"""(device id, sequence, points, received at)."""


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
    devices = sorted({w[0] for w in writes})
    result = [False] * len(writes)
    with store._tx() as conn:
        # One read for acceptance and the current health/state of every device.
        current = {
            str(r[0]): (r[1], r[2], r[3])
            for r in conn.execute(
                sa.select(D.c.id, D.c.health, D.c.update_state, D.c.active_bundle).where(
                    D.c.id.in_(devices), D.c.revoked.is_(False)
                )
            )
        }
        candidates: dict[tuple[str, int], int] = {}
        for i, (device, seq, _pts, _rcv) in enumerate(writes):
            if device in current and (device, seq) not in candidates:
                candidates[(device, seq)] = i  # first of duplicates inside this batch
        if not candidates:
            return result
        # ON CONFLICT DO NOTHING ... RETURNING: the keys this transaction really added,
        # so a replica racing on the same (device, sequence) just skips it.
        insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(TB)
        added = {
            (str(r[0]), int(r[1]))
            for r in conn.execute(
                insert.on_conflict_do_nothing(
                    index_elements=[TB.c.device_id, TB.c.sequence]
                ).returning(TB.c.device_id, TB.c.sequence),
                [
                    {"device_id": d, "sequence": q, "received_at": writes[i][3]}
                    for (d, q), i in candidates.items()
                ],
            )
        }
        points: list[dict[str, Any]] = []
        newest: dict[str, TelemetryRecord] = {}
        last_seen: dict[str, dt.datetime] = {}
        for key, i in candidates.items():
            if key not in added:
                continue
            result[i] = True
            device, seq, pts, received = writes[i]
            for p in pts:
                points.append(
                    {
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
                )
                if device not in newest or p.at > newest[device].at:
                    newest[device] = p
            last_seen[device] = max(received, last_seen.get(device, received))
        if points:
            conn.execute(T.insert(), points)
        if last_seen:
            now = dt.datetime.now(dt.UTC)
            rows = []
            for device, seen in last_seen.items():
                health, update_state, active = current[device]
                if device in newest:
                    p = newest[device]
                    # Spool replays arrive out of order: health is the newest point.
                    held = str(health.get("at", "")) if health else ""
                    if limit is not None and held > limit:
                        held = ""
                    if not (held and held > p.at.isoformat()):
                        health = health_summary(p)
                        update_state = telemetry_update_state(update_state, p.update_state)
                        active = dict(p.active_bundle) if p.active_bundle else active
                rows.append(
                    {
                        "b_id": device,
                        "b_seen": seen,
                        "b_health": health,
                        "b_state": update_state,
                        "b_active": active,
                    }
                )
            # One executemany for every device of the batch, not one UPDATE each.
            conn.execute(
                D.update()
                .where(D.c.id == sa.bindparam("b_id"))
                .values(
                    last_seen=sa.bindparam("b_seen"),
                    updated_at=now,
                    health=sa.bindparam("b_health", type_=D.c.health.type),
                    update_state=sa.bindparam("b_state"),
                    active_bundle=sa.bindparam("b_active", type_=D.c.active_bundle.type),
                ),
                rows,
            )
    store._notify(list(last_seen))
    return result
