"""The ingest quarantine (table ``ingest_quarantine``): dropped messages, bounded.

Ingest drops a message it cannot store (invalid field, refused by the database) and
acknowledges it so it is never redelivered; a copy lands here so an operator can see
what a device sent and why it was refused (``edgeflux cloud quarantine``). The table
is bounded twice: at most ``per_device`` rows per device (a noisy device evicts only
its own) and ``total`` rows in all; payloads are kept up to ``payload_bytes`` each.
Migration: ``quarantine_0001`` (alembic branch ``quarantine`` off ``0001``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from cloud.store.errors import StoreUnavailable

__all__ = ["QuarantineRecord", "QuarantineStore"]

_md = sa.MetaData()
quarantine_t = sa.Table(
    "ingest_quarantine",
    _md,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("topic", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.String(1000), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class QuarantineRecord:
    device_id: str
    """'' when the topic itself was not a device topic."""
    topic: str
    reason: str
    detail: str
    received_at: dt.datetime
    payload: bytes
    """The first ``payload_bytes`` of what was sent."""
    size_bytes: int
    id: int = 0


def _clean(text: str, limit: int) -> str:
    # PostgreSQL text holds no NUL; the detail quotes what a device sent.
    return text.replace("\x00", "\\x00")[:limit]


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class QuarantineStore:
    """Quarantined messages over a store engine (the store's migrations create the table)."""

    def __init__(
        self,
        engine: Engine,
        *,
        per_device: int = 100,
        total: int = 10_000,
        payload_bytes: int = 16 * 1024,
    ) -> None:
        self.engine = engine
        self.per_device = per_device
        self.total = total
        self.payload_bytes = payload_bytes

    @contextlib.contextmanager
    def _conn(self, write: bool = False) -> Iterator[Connection]:
        try:
            ctx = self.engine.begin() if write else self.engine.connect()
            with ctx as conn:
                yield conn
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise StoreUnavailable(f"database {self.engine.url!r} is unavailable: {e.orig}") from e

    def put_many(self, records: Sequence[QuarantineRecord]) -> None:
        """Keep `records`, then trim each of their devices and the whole table."""
        if not records:
            return
        q = quarantine_t
        rows = [
            {
                "device_id": _clean(r.device_id, 128),
                "topic": _clean(r.topic, 256),
                "reason": _clean(r.reason, 32),
                "detail": _clean(r.detail, 1000),
                "received_at": r.received_at.astimezone(dt.UTC),
                "size_bytes": len(r.payload),
                "payload": bytes(r.payload[: self.payload_bytes]),
            }
            for r in records
        ]
        with self._conn(write=True) as conn:
            conn.execute(q.insert(), rows)
            for device in sorted({str(r["device_id"]) for r in rows}):
                keep_from = conn.execute(
                    sa.select(q.c.id)
                    .where(q.c.device_id == device)
                    .order_by(q.c.id.desc())
                    .offset(self.per_device - 1)
                    .limit(1)
                ).scalar()
                if keep_from is not None:
                    conn.execute(q.delete().where(q.c.device_id == device, q.c.id < keep_from))
            newest = conn.execute(sa.select(sa.func.max(q.c.id))).scalar()
            if newest is not None:
                conn.execute(q.delete().where(q.c.id <= int(newest) - self.total))

    def recent(
        self, device_id: str | None = None, *, reason: str | None = None, limit: int = 100
    ) -> list[QuarantineRecord]:
        """The newest `limit` quarantined messages (of one device / reason), newest first."""
        q = quarantine_t
        query = sa.select(q)
        if device_id is not None:
            query = query.where(q.c.device_id == device_id)
        if reason is not None:
            query = query.where(q.c.reason == reason)
        with self._conn() as conn:
            rows = conn.execute(query.order_by(q.c.id.desc()).limit(limit)).fetchall()
        return [
            QuarantineRecord(
                device_id=r.device_id,
                topic=r.topic,
                reason=r.reason,
                detail=r.detail,
                received_at=_utc(r.received_at),
                payload=bytes(r.payload),
                size_bytes=int(r.size_bytes),
                id=int(r.id),
            )
            for r in rows
        ]
