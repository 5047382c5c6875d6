"""Rollouts: the rollout engine's records (it owns their spec and status JSON)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloud.store._base import StoreBase, as_utc
from cloud.store.models import Rollout, table

__all__ = ["RolloutQueries", "RolloutRecord"]

rollouts_t = table(Rollout)


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

    def put_rollout(self, rec: RolloutRecord) -> None:
        """Insert or replace a rollout (the rollout engine owns its spec/status JSON)."""
        values = {
            "bundle_name": rec.bundle_name,
            "bundle_version": rec.bundle_version,
            "state": rec.state,
            "spec": rec.spec,
            "status": rec.status,
            "updated_at": rec.updated_at,
            "created_by": rec.created_by,
        }
        with self._tx() as conn:
            n = conn.execute(
                rollouts_t.update().where(rollouts_t.c.id == rec.id).values(**values)
            ).rowcount
            if n == 0:
                conn.execute(
                    rollouts_t.insert().values(id=rec.id, created_at=rec.created_at, **values)
                )

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        with self._connect() as conn:
            row = conn.execute(rollouts_t.select().where(rollouts_t.c.id == rollout_id)).first()
        return _rollout(row) if row else None

    def list_rollouts(self, *, limit: int = 100, offset: int = 0) -> list[RolloutRecord]:
        q = rollouts_t.select().order_by(rollouts_t.c.created_at.desc()).limit(limit).offset(offset)
        with self._connect() as conn:
            return [_rollout(r) for r in conn.execute(q).fetchall()]
