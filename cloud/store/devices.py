"""Devices: registration, labels, presence, inventory and revocation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from cloud.store._base import StoreBase, as_utc, utcnow
from cloud.store._device_rows import (
    DEVICE_COLUMNS,
    GET_DEVICE,
    IS_REVOKED,
    DevicePage,
    DeviceRecord,
    device_record,
)
from cloud.store.errors import ConflictError, NotFoundError
from cloud.store.models import Device, DeviceLabel, RevokedCertificate, table

__all__ = ["DeviceQueries", "parse_label_selector"]

devices_t = table(Device)
labels_t = table(DeviceLabel)
revoked_t = table(RevokedCertificate)


def parse_label_selector(text: str) -> dict[str, str]:
    """``"site=lab,role=arm"`` → ``{"site": "lab", "role": "arm"}`` (every pair must match)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label selector part {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


class DeviceQueries(StoreBase):
    """Reads and writes of the ``devices``, ``device_labels`` and revocation tables."""

    def add_device(
        self,
        device_id: str,
        cert_fingerprint: str,
        labels: Mapping[str, str] | None = None,
        hardware_tags: Sequence[str] = (),
    ) -> DeviceRecord:
        """Register a device; ConflictError if the id exists (revoked ids stay taken)."""
        now = utcnow()
        labels = dict(labels or {})
        try:
            with self._tx() as conn:
                conn.execute(
                    devices_t.insert().values(
                        id=device_id,
                        cert_fingerprint=cert_fingerprint,
                        labels=labels,
                        hardware_tags=list(hardware_tags),
                        created_at=now,
                        updated_at=now,
                        online=False,
                        revoked=False,
                        runtime_version="",
                        update_state="",
                        update_reason="",
                        update_detail="",
                        desired_generation=0,
                    )
                )
                if labels:
                    conn.execute(
                        labels_t.insert(),
                        [{"device_id": device_id, "key": k, "value": v} for k, v in labels.items()],
                    )
        except ConflictError as e:
            raise ConflictError(f"device {device_id!r} already exists") from e
        self._notify([device_id])
        return self.require_device(device_id)

    def add_devices_bulk(self, rows: Sequence[tuple[str, str, Mapping[str, str]]]) -> None:
        """Insert many (id, fingerprint, labels) at once (fleet import, benchmarks)."""
        now = utcnow()
        with self._tx() as conn:
            conn.execute(
                devices_t.insert(),
                [
                    {
                        "id": i,
                        "cert_fingerprint": fp,
                        "labels": dict(lb),
                        "hardware_tags": [],
                        "created_at": now,
                        "updated_at": now,
                        "online": False,
                        "revoked": False,
                        "runtime_version": "",
                        "update_state": "",
                        "update_reason": "",
                        "update_detail": "",
                        "desired_generation": 0,
                    }
                    for i, fp, lb in rows
                ],
            )
            labels = [
                {"device_id": i, "key": k, "value": v} for i, _, lb in rows for k, v in lb.items()
            ]
            if labels:
                conn.execute(labels_t.insert(), labels)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        if self._raw_sql:
            row = self._raw_read("device", (device_id,))
        else:
            with self._connect() as conn:
                row = conn.execute(GET_DEVICE, {"device_id": device_id}).first()
        return device_record(row) if row else None

    def require_device(self, device_id: str) -> DeviceRecord:
        rec = self.get_device(device_id)
        if rec is None:
            raise NotFoundError(f"no device {device_id!r}")
        return rec

    def device_credentials(self, device_id: str) -> tuple[str, bool] | None:
        """(certificate fingerprint, revoked) for an id, or None: the per-call auth check."""
        with self._connect() as conn:
            row = conn.execute(
                sa.select(devices_t.c.cert_fingerprint, devices_t.c.revoked).where(
                    devices_t.c.id == device_id
                )
            ).first()
        return (row[0], bool(row[1])) if row else None

    def _device_filter(
        self, selector: Mapping[str, str] | None, text: str | None
    ) -> list[sa.ColumnElement[bool]]:
        conds: list[sa.ColumnElement[bool]] = []
        for key, value in (selector or {}).items():
            conds.append(
                sa.exists().where(
                    labels_t.c.device_id == devices_t.c.id,
                    labels_t.c.key == key,
                    labels_t.c.value == value,
                )
            )
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(devices_t.c.id.like(f"%{escaped}%", escape="\\"))
        return conds

    def list_devices(
        self,
        selector: Mapping[str, str] | None = None,
        *,
        text: str | None = None,
        limit: int = 100,
        after: str = "",
        with_total: bool = True,
    ) -> DevicePage:
        """Devices matching every label in `selector` (and `text` in the id), ordered by id.

        Keyset pagination: pass the previous page's ``next_after`` as `after`.
        """
        limit = max(1, min(limit, 10_000))
        conds = self._device_filter(selector, text)
        query = sa.select(*DEVICE_COLUMNS).where(*conds)
        if after:
            query = query.where(devices_t.c.id > after)
        query = query.order_by(devices_t.c.id).limit(limit + 1)
        count = sa.select(sa.func.count()).select_from(devices_t).where(*conds)
        if self._raw_sql:  # SQLite: skip SQLAlchemy's per-row result machinery
            rows = self._raw_all(query)
            if not with_total:
                total = -1
            elif not after and len(rows) <= limit:
                total = len(rows)  # the first page holds every match: no count query
            else:
                total = int(self._raw_all(count)[0][0])
        else:
            with self._connect() as conn:
                rows = list(conn.execute(query).fetchall())
                if not with_total:
                    total = -1
                elif not after and len(rows) <= limit:
                    total = len(rows)
                else:
                    total = int(conn.execute(count).scalar_one())
        devices = [device_record(r) for r in rows[:limit]]
        next_after = devices[-1].id if len(rows) > limit else ""
        return DevicePage(devices, next_after, total)

    def devices_changed_since(self, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """(id, updated_at) of devices whose visible state changed after `since`.

        Any process may write the store (ingest, CLI, other replicas); the server polls
        this to feed WatchFleet. Presence heartbeats (`touch`) do not count as changes.
        """
        q = sa.select(devices_t.c.id, devices_t.c.updated_at).where(devices_t.c.updated_at > since)
        with self._connect() as conn:
            rows = conn.execute(q.order_by(devices_t.c.updated_at)).fetchall()
        return [(r[0], as_utc(r[1])) for r in rows]  # type: ignore[misc]

    def revoke_device(self, device_id: str, actor: str = "") -> DeviceRecord:
        """Mark the device revoked and its certificate fingerprint refused; idempotent."""
        now = utcnow()
        with self._tx() as conn:
            row = conn.execute(
                sa.select(devices_t.c.cert_fingerprint, devices_t.c.revoked).where(
                    devices_t.c.id == device_id
                )
            ).first()
            if row is None:
                raise NotFoundError(f"no device {device_id!r}")
            conn.execute(
                devices_t.update()
                .where(devices_t.c.id == device_id)
                .values(revoked=True, revoked_at=now, online=False, updated_at=now)
            )
            exists = conn.execute(
                revoked_t.select().where(revoked_t.c.fingerprint == row[0])
            ).first()
            if exists is None:
                conn.execute(
                    revoked_t.insert().values(
                        fingerprint=row[0], subject=f"device:{device_id}", revoked_at=now
                    )
                )
            self._audit(conn, actor, "device.revoke", device_id, None)
        self._notify([device_id])
        return self.require_device(device_id)

    def revoke_certificate(self, fingerprint: str, subject: str, actor: str = "") -> None:
        with self._tx() as conn:
            if (
                conn.execute(
                    revoked_t.select().where(revoked_t.c.fingerprint == fingerprint)
                ).first()
                is None
            ):
                conn.execute(
                    revoked_t.insert().values(
                        fingerprint=fingerprint, subject=subject, revoked_at=utcnow()
                    )
                )
            self._audit(conn, actor, "certificate.revoke", subject, {"fingerprint": fingerprint})

    def revoked_fingerprints(self) -> set[str]:
        with self._connect() as conn:
            return {r[0] for r in conn.execute(sa.select(revoked_t.c.fingerprint)).fetchall()}

    def is_revoked(self, fingerprint: str) -> bool:
        if self._raw_sql:
            return self._raw_read("revoked", (fingerprint,)) is not None
        with self._connect() as conn:
            return conn.execute(IS_REVOKED, {"fp": fingerprint}).first() is not None

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> DeviceRecord:
        with self._tx() as conn:
            n = conn.execute(
                devices_t.update()
                .where(devices_t.c.id == device_id)
                .values(labels=dict(labels), updated_at=utcnow())
            ).rowcount
            if n == 0:
                raise NotFoundError(f"no device {device_id!r}")
            conn.execute(labels_t.delete().where(labels_t.c.device_id == device_id))
            if labels:
                conn.execute(
                    labels_t.insert(),
                    [{"device_id": device_id, "key": k, "value": v} for k, v in labels.items()],
                )
        self._notify([device_id])
        return self.require_device(device_id)

    def set_online(
        self,
        device_id: str,
        online: bool,
        at: dt.datetime | None = None,
        runtime_version: str | None = None,
    ) -> bool:
        """Record presence (from the retained MQTT state topic); False for an unknown or
        revoked device (a revoked robot's retained "online" must not bring it back)."""
        at = at or utcnow()
        values: dict[str, Any] = {"online": online, "last_seen": at, "updated_at": utcnow()}
        if runtime_version:
            values["runtime_version"] = runtime_version
        with self._tx() as conn:
            n = conn.execute(
                devices_t.update()
                .where(devices_t.c.id == device_id, devices_t.c.revoked.is_(False))
                .values(**values)
            ).rowcount
        if n:
            self._notify([device_id])
        return bool(n)

    def touch(self, device_id: str, at: dt.datetime | None = None) -> bool:
        """Update last seen (any authenticated call or message); False for an unknown device."""
        at = at or utcnow()
        with self._tx() as conn:
            n = conn.execute(
                devices_t.update().where(devices_t.c.id == device_id).values(last_seen=at)
            ).rowcount
        return bool(n)

    def record_inventory(self, device_id: str, inventory: Mapping[str, Any]) -> DeviceRecord:
        """Store what the device reports it has (runtime, hardware, active bundle, ...)."""
        now = utcnow()
        values: dict[str, Any] = {
            "inventory": dict(inventory),
            "last_seen": now,
            "updated_at": now,
        }
        if "runtime_version" in inventory:
            values["runtime_version"] = str(inventory["runtime_version"])
        if "hardware_tags" in inventory:
            values["hardware_tags"] = list(inventory["hardware_tags"])
        if inventory.get("active_bundle"):
            values["active_bundle"] = dict(inventory["active_bundle"])
        with self._tx() as conn:
            n = conn.execute(
                devices_t.update().where(devices_t.c.id == device_id).values(**values)
            ).rowcount
            if n == 0:
                raise NotFoundError(f"no device {device_id!r}")
        self._notify([device_id])
        return self.require_device(device_id)
