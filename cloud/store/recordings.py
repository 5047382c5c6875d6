"""The trajectory store's index (table ``recording_segments``): one row per uploaded,
checksum-verified flight-recorder segment; the files live under ``<home>/recordings``.
Migration: ``recordings_0001`` (alembic branch ``recordings`` off ``0001``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from cloud.store.errors import ConflictError, StoreUnavailable

__all__ = ["RecordingStore", "SegmentRecord"]

_md = sa.MetaData()
segments_t = sa.Table(
    "recording_segments",
    _md,
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("start_ns", sa.BigInteger, nullable=False),
    sa.Column("kept", sa.Boolean, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class SegmentRecord:
    device_id: str
    name: str
    start_ns: int
    kept: bool
    size: int
    sha256: str
    uploaded_at: dt.datetime


def _record(row: sa.Row[Any]) -> SegmentRecord:
    at = row.uploaded_at
    return SegmentRecord(
        row.device_id,
        row.name,
        int(row.start_ns),
        bool(row.kept),
        int(row.size),
        row.sha256,
        at if at.tzinfo else at.replace(tzinfo=dt.UTC),
    )


class RecordingStore:
    """Segment rows over a store engine (the store's migrations create the table)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def _conn(self, write: bool = False) -> Iterator[Connection]:
        try:
            ctx = self.engine.begin() if write else self.engine.connect()
            with ctx as conn:
                yield conn
        except exc.IntegrityError as e:
            raise ConflictError(str(e.orig).splitlines()[0]) from e
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise StoreUnavailable(f"database {self.engine.url!r} is unavailable: {e.orig}") from e

    def put(self, rec: SegmentRecord) -> SegmentRecord:
        """Index `rec`; the same segment again (same digest) is harmless."""
        with self._conn(write=True) as conn:
            t = segments_t
            row = conn.execute(
                sa.select(t).where(t.c.device_id == rec.device_id, t.c.name == rec.name)
            ).first()
            if row is not None:
                old = _record(row)
                if old.sha256 != rec.sha256:
                    raise ConflictError(
                        f"segment {rec.name} of {rec.device_id} is already stored with "
                        f"sha256 {old.sha256[:12]}…, not {rec.sha256[:12]}…"
                    )
                return old
            conn.execute(
                t.insert().values(
                    device_id=rec.device_id,
                    name=rec.name,
                    start_ns=rec.start_ns,
                    kept=rec.kept,
                    size=rec.size,
                    sha256=rec.sha256,
                    uploaded_at=rec.uploaded_at.astimezone(dt.UTC),
                )
            )
        return rec

    def get(self, device_id: str, name: str) -> SegmentRecord | None:
        t = segments_t
        with self._conn() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.device_id == device_id, t.c.name == name)
            ).first()
        return _record(row) if row is not None else None

    def list(self, device_id: str | None = None, limit: int = 1000) -> list[SegmentRecord]:
        """Newest first."""
        t = segments_t
        q = sa.select(t).order_by(t.c.start_ns.desc()).limit(limit)
        if device_id is not None:
            q = q.where(t.c.device_id == device_id)
        with self._conn() as conn:
            return [_record(r) for r in conn.execute(q)]
