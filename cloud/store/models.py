"""SQLAlchemy 2 models of the control-plane store (the schema; migrations live in
`migrations/versions/`, starting at revision ``0001``).

Portable across SQLite and PostgreSQL: JSON columns, timezone-aware timestamps
(SQLite stores them naive in UTC; the store normalises on read), no server-side
functions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEntry",
    "Base",
    "Bundle",
    "Device",
    "DeviceLabel",
    "Event",
    "RevokedCertificate",
    "Rollout",
    "TelemetryBatch",
    "TelemetryPoint",
    "table",
]

Stamp = DateTime(timezone=True)
# BigInteger autoincrement is not a rowid alias on SQLite; Integer there, BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cert_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    hardware_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(Stamp)
    updated_at: Mapped[dt.datetime] = mapped_column(Stamp, index=True)  # plane_0002
    last_seen: Mapped[dt.datetime | None] = mapped_column(Stamp, nullable=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Stamp, nullable=True)
    runtime_version: Mapped[str] = mapped_column(String(64), default="")
    active_bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    update_state: Mapped[str] = mapped_column(String(32), default="")
    update_reason: Mapped[str] = mapped_column(String(128), default="")
    update_detail: Mapped[str] = mapped_column(Text, default="")  # updates_0001
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    inventory: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    desired_bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    desired_generation: Mapped[int] = mapped_column(BigInteger, default=0)


class DeviceLabel(Base):
    """Labels again, one row per (device, key): label selectors become indexed lookups."""

    __tablename__ = "device_labels"

    device_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))

    __table_args__ = (Index("ix_device_labels_key_value", "key", "value", "device_id"),)


class RevokedCertificate(Base):
    __tablename__ = "revoked_certificates"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(256))
    revoked_at: Mapped[dt.datetime] = mapped_column(Stamp)


class Bundle(Base):
    __tablename__ = "bundles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    policy_sha256: Mapped[str] = mapped_column(String(64), default="")
    oms_root_digest: Mapped[str] = mapped_column(String(64), default="")
    efb_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    signer_key_id: Mapped[str] = mapped_column(String(128), default="")
    target_path: Mapped[str] = mapped_column(String(512))
    published_at: Mapped[dt.datetime] = mapped_column(Stamp)
    published_by: Mapped[str] = mapped_column(String(128), default="")

    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_bundles_name_version"),
        UniqueConstraint("name", "sequence", name="uq_bundles_name_sequence"),
    )


class Rollout(Base):
    """Rollouts belong to the rollout engine (`cloud.rollouts`): spec and status as JSON."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bundle_name: Mapped[str] = mapped_column(String(128))
    bundle_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(Stamp)
    updated_at: Mapped[dt.datetime] = mapped_column(Stamp)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class TelemetryBatch(Base):
    """One row per accepted MQTT batch: (device, sequence) makes ingest idempotent."""

    __tablename__ = "telemetry_batches"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(Stamp)


class TelemetryPoint(Base):
    __tablename__ = "telemetry"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(Stamp)
    sequence: Mapped[int] = mapped_column(BigInteger)
    loop_p50_ms: Mapped[float] = mapped_column(Float, default=0.0)
    loop_p99_ms: Mapped[float] = mapped_column(Float, default=0.0)
    deadline_miss_rate: Mapped[float] = mapped_column(Float, default=0.0)
    safety_interventions: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    memory_percent: Mapped[float] = mapped_column(Float, default=0.0)
    temperature_c: Mapped[float] = mapped_column(Float, default=0.0)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_telemetry_device_at", "device_id", "at"),
        Index("ix_telemetry_at", "at"),
    )


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[dt.datetime] = mapped_column(Stamp)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), default="")
    reason_code: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    bundle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        UniqueConstraint("device_id", "sequence", name="uq_events_device_sequence"),
        Index("ix_events_device_at", "device_id", "at"),
    )


class AuditEntry(Base):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_action_target", "action", "target"),)  # audit_0001

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(Stamp)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256), default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


def table(model: type[Base]) -> Table:
    """A model's Core table, for the store's SQLAlchemy Core statements."""
    t = model.__table__
    assert isinstance(t, Table)
    return t
