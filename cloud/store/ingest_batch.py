"""Batched telemetry writes for MQTT ingest (owned by the fleet-agent issue).

`Store.record_telemetry` commits one MQTT batch per transaction, which caps ingest at
a few hundred batches per second (each commit is an fsync on SQLite, a round trip on
PostgreSQL). :func:`record_telemetry_many` writes many batches in one transaction with
the same rules: exactly once per (device, sequence), only from registered, unrevoked
devices, health = the newest point, ``updated_at`` stamped so `WatchFleet` sees it.

If two ingest replicas race on the same (device, sequence) the unique key refuses
the whole transaction; the caller then falls back to per-batch writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from cloud.store._store import Store, TelemetryRecord
from cloud.store.models import Device, TelemetryBatch, TelemetryPoint

__all__ = ["TelemetryWrite", "record_telemetry_many"]

D = Device.__table__
TB = TelemetryBatch.__table__
T = TelemetryPoint.__table__

TelemetryWrite = tuple[str, int, Sequence[TelemetryRecord], dt.datetime]
"""(device id, sequence, points, received at)."""


def _health(p: TelemetryRecord) -> dict[str, Any]:
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


def record_telemetry_many(store: Store, writes: Sequence[TelemetryWrite]) -> list[bool]:
    """Store each batch once; result[i] is False for a duplicate or an unaccepted device.

    Raises the store's errors (ConflictError on a concurrent duplicate: retry per batch).
    """
    if not writes:
        return []
    devices = sorted({w[0] for w in writes})
    result = [False] * len(writes)
    with store._tx() as conn:
        accepted = {
            r[0]
            for r in conn.execute(
                sa.select(D.c.id).where(D.c.id.in_(devices), D.c.revoked.is_(False))
            )
        }
        pairs = [(w[0], w[1]) for w in writes if w[0] in accepted]
        existing: set[tuple[str, int]] = set()
        for i in range(0, len(pairs), 500):
            chunk = pairs[i : i + 500]
            existing |= {
                (str(a), int(b))
                for a, b in conn.execute(
                    sa.select(TB.c.device_id, TB.c.sequence).where(
                        sa.tuple_(TB.c.device_id, TB.c.sequence).in_(chunk)
                    )
                )
            }
        batches: list[dict[str, Any]] = []
        points: list[dict[str, Any]] = []
        newest: dict[str, tuple[TelemetryRecord, dt.datetime]] = {}
        last_seen: dict[str, dt.datetime] = {}
        for i, (device, seq, pts, received) in enumerate(writes):
            key = (device, seq)
            if device not in accepted or key in existing:
                continue
            existing.add(key)  # a duplicate inside this same batch
            result[i] = True
            batches.append({"device_id": device, "sequence": seq, "received_at": received})
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
                if device not in newest or p.at > newest[device][0].at:
                    newest[device] = (p, received)
            last_seen[device] = max(received, last_seen.get(device, received))
        if batches:
            conn.execute(TB.insert(), batches)
        if points:
            conn.execute(T.insert(), points)
        if last_seen:
            now = dt.datetime.now(dt.UTC)
            current = {
                str(r[0]): (r[1], r[2], r[3])
                for r in conn.execute(
                    sa.select(D.c.id, D.c.health, D.c.update_state, D.c.active_bundle).where(
                        D.c.id.in_(list(last_seen))
                    )
                )
            }
            rows = []
            for device, seen in last_seen.items():
                health, update_state, active = current.get(device, (None, "", None))
                if device in newest:
                    p = newest[device][0]
                    # Spool replays arrive out of order: health is the newest point.
                    if not (health and str(health.get("at", "")) > p.at.isoformat()):
                        health = _health(p)
                        update_state = p.update_state or update_state
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
