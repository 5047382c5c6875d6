"""Updates: a device's desired bundle and the events its update reports."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloud.store._base import StoreBase, as_utc, utcnow
from cloud.store.errors import ConflictError, NotFoundError
from cloud.store.models import Device, Event, table

__all__ = ["EventRecord", "UpdateQueries"]

devices_t = table(Device)
events_t = table(Event)


@dataclass(frozen=True)
class EventRecord:
    device_id: str
    sequence: int
    at: dt.datetime
    kind: str
    state: str = ""
    reason_code: str = ""
    detail: str = ""
    bundle: dict[str, Any] | None = None


class UpdateQueries(StoreBase):
    """Writes of the desired state and reads and writes of the ``events`` table."""

    def set_desired(
        self, device_ids: Sequence[str], bundle: Mapping[str, Any] | None, actor: str = ""
    ) -> dict[str, int]:
        """Point devices at a bundle ({name, version, sequence, ...}); bumps each generation.

        Returns the new generation per device. NotFoundError if any id is unknown
        (nothing is changed then).
        """
        result: dict[str, int] = {}
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(devices_t.c.id, devices_t.c.desired_generation).where(
                    devices_t.c.id.in_(list(device_ids))
                )
            ).fetchall()
            found = {r[0]: int(r[1]) for r in rows}
            missing = sorted(set(device_ids) - set(found))
            if missing:
                raise NotFoundError(f"no such devices: {', '.join(missing[:10])}")
            now = utcnow()
            for device_id, gen in found.items():
                conn.execute(
                    devices_t.update()
                    .where(devices_t.c.id == device_id)
                    .values(
                        desired_bundle=dict(bundle) if bundle else None,
                        desired_generation=gen + 1,
                        updated_at=now,
                    )
                )
                result[device_id] = gen + 1
            self._audit(
                conn,
                actor,
                "device.set_desired",
                ",".join(sorted(found))[:256],
                {"bundle": dict(bundle) if bundle else None},
            )
        self._notify(result)
        return result

    def record_event(self, ev: EventRecord) -> bool:
        """Store an event once per (device, sequence); update events move the device's state.

        False (nothing written) for a duplicate, or a device unknown or revoked.
        """
        try:
            with self._tx() as conn:
                if not self._accepts_data(conn, ev.device_id):
                    return False
                conn.execute(
                    events_t.insert().values(
                        device_id=ev.device_id,
                        sequence=ev.sequence,
                        at=ev.at,
                        kind=ev.kind,
                        state=ev.state,
                        reason_code=ev.reason_code,
                        detail=ev.detail,
                        bundle=ev.bundle,
                    )
                )
                if ev.kind == "update" and ev.state:
                    conn.execute(
                        devices_t.update()
                        .where(devices_t.c.id == ev.device_id)
                        .values(
                            update_state=ev.state,
                            update_reason=ev.reason_code,
                            update_detail=ev.detail,
                            last_seen=utcnow(),
                            updated_at=utcnow(),
                        )
                    )
        except ConflictError:
            return False
        self._notify([ev.device_id])
        return True

    def events(
        self, device_id: str | None = None, *, kind: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        """The newest `limit` events (of one device and/or kind), returned oldest first."""
        q = events_t.select()
        if device_id is not None:
            q = q.where(events_t.c.device_id == device_id)
        if kind is not None:
            q = q.where(events_t.c.kind == kind)
        q = q.order_by(events_t.c.at.desc(), events_t.c.id.desc()).limit(limit)
        with self._connect() as conn:
            rows = conn.execute(q).fetchall()
        return [
            EventRecord(
                device_id=m["device_id"],
                sequence=int(m["sequence"]),
                at=as_utc(m["at"]),  # type: ignore[arg-type]
                kind=m["kind"],
                state=m["state"],
                reason_code=m["reason_code"],
                detail=m["detail"],
                bundle=m["bundle"],
            )
            for m in (r._mapping for r in reversed(rows))
        ]
