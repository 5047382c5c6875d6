"""A device row as a :class:`DeviceRecord`, decoded fast.

Listing thousands of devices is dominated by per-value type processing, so the
device reads select the JSON and time columns as raw text and decode them here
with the C json / datetime parsers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloud.store.models import Device, RevokedCertificate, table

__all__ = [
    "DEVICE_COLUMNS",
    "GET_DEVICE",
    "HOT_READS",
    "IS_REVOKED",
    "DevicePage",
    "DeviceRecord",
    "device_record",
]

devices_t = table(Device)
revoked_t = table(RevokedCertificate)


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    cert_fingerprint: str
    labels: dict[str, str]
    hardware_tags: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    last_seen: dt.datetime | None
    online: bool
    revoked: bool
    runtime_version: str
    active_bundle: dict[str, Any] | None
    update_state: str
    update_reason: str
    update_detail: str
    """The readable detail the device reported with `update_reason`."""
    health: dict[str, Any] | None
    inventory: dict[str, Any] | None
    desired_bundle: dict[str, Any] | None
    desired_generation: int


assert {f.name for f in dataclasses.fields(DeviceRecord)} == {
    c.name for c in devices_t.columns if c.name != "revoked_at"
}, "DeviceRecord must mirror the devices table (see device_record)"


@dataclass(frozen=True)
class DevicePage:
    devices: list[DeviceRecord]
    next_after: str  # "" when this is the last page
    total: int


_JSON_COLUMNS = (
    "labels",
    "hardware_tags",
    "active_bundle",
    "health",
    "inventory",
    "desired_bundle",
)
_TIME_COLUMNS = ("created_at", "updated_at", "last_seen")
# Listing thousands of devices is dominated by per-value type processing; these columns
# come back raw (SQLite: text) and are decoded below with the C json / datetime parsers.
_FAST_ORDER = (
    "id",
    "cert_fingerprint",
    "labels",
    "hardware_tags",
    "created_at",
    "updated_at",
    "last_seen",
    "online",
    "revoked",
    "runtime_version",
    "active_bundle",
    "update_state",
    "update_reason",
    "update_detail",
    "health",
    "inventory",
    "desired_bundle",
    "desired_generation",
)
DEVICE_COLUMNS = [
    sa.type_coerce(devices_t.c[n], sa.Text).label(n)
    if n in _JSON_COLUMNS + _TIME_COLUMNS
    else devices_t.c[n]
    for n in _FAST_ORDER
]


@functools.lru_cache(maxsize=8192)
def _json_cached(text: str) -> Any:
    return json.loads(text)


def _json_value(value: Any) -> Any:
    """Decode a flat JSON column (labels, tags, bundle refs, health).

    Fleets repeat the same small documents (labels, bundle refs) thousands of times, so
    each distinct text is parsed once and every record gets its own shallow copy.
    """
    if not isinstance(value, str):
        return value
    out = _json_cached(value) if len(value) <= 1024 else json.loads(value)
    if isinstance(out, dict):
        if any(isinstance(v, (dict, list)) for v in out.values()):
            return json.loads(value)  # nested: a shallow copy would share the cached parts
        return dict(out)
    if isinstance(out, list):
        if any(isinstance(v, (dict, list)) for v in out):
            return json.loads(value)
        return list(out)
    return out


def _time_value(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value  # type: ignore[no-any-return]


# Built once: the per-call hot path (every device RPC) then skips statement construction.
GET_DEVICE = sa.select(*DEVICE_COLUMNS).where(devices_t.c.id == sa.bindparam("device_id"))
IS_REVOKED = sa.select(revoked_t.c.fingerprint).where(revoked_t.c.fingerprint == sa.bindparam("fp"))
# The reads SQLite serves on a raw connection, by name (see `StoreBase._raw_read`).
HOT_READS: dict[str, Any] = {"device": GET_DEVICE, "revoked": IS_REVOKED}


def device_record(row: Sequence[Any]) -> DeviceRecord:
    (
        id_,
        fp,
        labels,
        tags,
        created,
        updated,
        seen,
        online,
        revoked,
        runtime_version,
        active,
        update_state,
        update_reason,
        update_detail,
        health,
        inventory,
        desired,
        generation,
    ) = row
    # A frozen dataclass's __init__ sets each field through object.__setattr__, which
    # dominates listing 10,000 devices; filling __dict__ at once yields the same object.
    rec = object.__new__(DeviceRecord)
    rec.__dict__.update(
        id=id_,
        cert_fingerprint=fp,
        labels=_json_value(labels) or {},
        hardware_tags=_json_value(tags) or [],
        created_at=_time_value(created),
        updated_at=_time_value(updated),
        last_seen=_time_value(seen) if seen is not None else None,
        online=bool(online),
        revoked=bool(revoked),
        runtime_version=runtime_version,
        active_bundle=_json_value(active) if active is not None else None,
        update_state=update_state,
        update_reason=update_reason,
        update_detail=update_detail,
        health=_json_value(health) if health is not None else None,
        inventory=json.loads(inventory) if isinstance(inventory, str) else inventory,
        desired_bundle=_json_value(desired) if desired is not None else None,
        desired_generation=int(generation),
    )
    return rec
