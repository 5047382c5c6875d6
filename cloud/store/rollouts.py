"""Rollouts: the rollout engine's records (it owns their spec and status JSON), the
bulk reads its driver pass and gates judge (a wave's events; the device rows and update
events of the devices a pass checks), and its audit entries written once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloud.store._base import StoreBase, as_utc
from cloud.store._device_rows import DEVICE_COLUMNS, DeviceRecord, device_record
from cloud.store.errors import StaleWriteError
from cloud.store.models import AuditEntry, Device, Event, Rollout, table
from cloud.store.updates import EventRecord

__all__ = ["RolloutQueries", "RolloutRecord"]

rollouts_t = table(Rollout)
events_t = table(Event)
audit_t = table(AuditEntry)
devices_t = table(Device)
_IN_CHUNK = 500  # ids per IN list


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    bundle_name: str
    bundle_version: str
    state: str
    spec: dict[str, Any]
    status: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    created_by: str


def _event(m: Any) -> EventRecord:
    return EventRecord(
        device_id=m["device_id"],
        sequence=int(m["sequence"]),
        at=as_utc(m["at"]),  # type: ignore[arg-type]
        kind=m["kind"],
        state=m["state"],
        reason_code=m["reason_code"],
        detail=m["detail"],
        bundle=m["bundle"],
    )


def _rollout(row: sa.Row[Any]) -> RolloutRecord:
    m = row._mapping
    return RolloutRecord(
        id=m["id"],
        bundle_name=m["bundle_name"],
        bundle_version=m["bundle_version"],
        state=m["state"],
        spec=dict(m["spec"]),
        status=dict(m["status"]),
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(m["updated_at"]),  # type: ignore[arg-type]
        created_by=m["created_by"],
    )


class RolloutQueries(StoreBase):
    """Reads and writes of the ``rollouts`` table."""

    def put_rollout(self, rec: RolloutRecord, *, expect: int | None = None) -> int:
        """Insert or replace a rollout (the rollout engine owns its spec/status JSON);
        returns the revision written (kept in the status as ``revision``).

        With `expect` (the revision the writer read; 0: none yet), the write happens
        only if the stored rollout is still at that revision, else
        :class:`StaleWriteError` and nothing is written: writers on several replicas
        (the rollout driver, operators) never overwrite each other's change unseen."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(rollouts_t.c.status["revision"].as_integer())
                .where(rollouts_t.c.id == rec.id)
                .with_for_update()
            ).first()
            current = None if row is None else int(row[0] or 0)
            if expect is not None and (current or 0) != expect:
                raise StaleWriteError(
                    f"write refused: rollout {rec.id!r} is at revision {current}, not "
                    f"{expect} (it was changed meanwhile)"
                )
            revision = (current or 0) + 1
            values = {
                "bundle_name": rec.bundle_name,
                "bundle_version": rec.bundle_version,
                "state": rec.state,
                "spec": rec.spec,
                "status": {**rec.status, "revision": revision},
                "updated_at": rec.updated_at,
                "created_by": rec.created_by,
            }
            if row is None:
                conn.execute(
                    rollouts_t.insert().values(id=rec.id, created_at=rec.created_at, **values)
                )
            else:
                conn.execute(rollouts_t.update().where(rollouts_t.c.id == rec.id).values(**values))
        return revision

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        with self._connect() as conn:
            row = conn.execute(rollouts_t.select().where(rollouts_t.c.id == rollout_id)).first()
        return _rollout(row) if row else None

    def list_rollouts(self, *, limit: int = 100, offset: int = 0) -> list[RolloutRecord]:
        q = rollouts_t.select().order_by(rollouts_t.c.created_at.desc()).limit(limit).offset(offset)
        with self._connect() as conn:
            return [_rollout(r) for r in conn.execute(q).fetchall()]

    def events_window(
        self, device_ids: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, list[EventRecord]]:
        """The events of `device_ids` from `start` to `end` (both included), per device,
        oldest first, in one query (a few for thousands of devices)."""
        out: dict[str, list[EventRecord]] = {d: [] for d in device_ids}
        ids = list(out)
        with self._connect() as conn:
            for i in range(0, len(ids), _IN_CHUNK):
                q = (
                    events_t.select()
                    .where(events_t.c.device_id.in_(ids[i : i + _IN_CHUNK]))
                    .where(events_t.c.at >= start, events_t.c.at <= end)
                    .order_by(events_t.c.device_id, events_t.c.at, events_t.c.id)
                )
                for m in (r._mapping for r in conn.execute(q)):
                    out[m["device_id"]].append(_event(m))
        return out

    def devices_by_id(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        """The rows of `device_ids` (one query per 500; a device not in the fleet is
        absent): a rollout pass reads the devices it judges or points at a bundle so."""
        out: dict[str, DeviceRecord] = {}
        ids = list(dict.fromkeys(device_ids))
        with self._connect() as conn:
            for i in range(0, len(ids), _IN_CHUNK):
                q = sa.select(*DEVICE_COLUMNS).where(devices_t.c.id.in_(ids[i : i + _IN_CHUNK]))
                for row in conn.execute(q):
                    rec = device_record(row)
                    out[rec.id] = rec
        return out

    def update_events_since(
        self, device_ids: Sequence[str], since: dt.datetime
    ) -> dict[str, list[EventRecord]]:
        """The ``update`` events of `device_ids` at or after `since`, per device, oldest
        first, in one query per 500 devices."""
        out: dict[str, list[EventRecord]] = {d: [] for d in device_ids}
        ids = list(out)
        with self._connect() as conn:
            for i in range(0, len(ids), _IN_CHUNK):
                q = (
                    events_t.select()
                    .where(events_t.c.device_id.in_(ids[i : i + _IN_CHUNK]))
                    .where(events_t.c.kind == "update", events_t.c.at >= since)
                    .order_by(events_t.c.device_id, events_t.c.at, events_t.c.id)
                )
                for m in (r._mapping for r in conn.execute(q)):
                    out[m["device_id"]].append(_event(m))
        return out

    def audit_once(
        self, key: str, actor: str, action: str, target: str, detail: dict[str, Any]
    ) -> bool:
        """Write an audit entry unless one with this `key` (kept in its detail as
        ``key``) exists for `action` on `target`; True if written. Replaying a decision
        after a restart so audits it once."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(audit_t.c.detail).where(
                    audit_t.c.action == action, audit_t.c.target == target
                )
            ).fetchall()
            if any(isinstance(r[0], dict) and r[0].get("key") == key for r in rows):
                return False
            self._audit(conn, actor, action, target, {**detail, "key": key})
        return True
