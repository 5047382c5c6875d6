"""The audit log: who did what to which device, bundle or rollout."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from cloud.store._base import StoreBase, as_utc
from cloud.store.models import AuditEntry, table

__all__ = ["AuditQueries", "AuditRecord"]

audit_t = table(AuditEntry)


@dataclass(frozen=True)
class AuditRecord:
    at: dt.datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None


class AuditQueries(StoreBase):
    """Reads and writes of the ``audit_log`` table (each write also adds a row)."""

    def audit(
        self, actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None
    ) -> None:
        with self._tx() as conn:
            self._audit(conn, actor, action, target, detail)

    def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        """Newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                audit_t.select().order_by(audit_t.c.id.desc()).limit(limit)
            ).fetchall()
        return [
            AuditRecord(
                at=as_utc(m["at"]),  # type: ignore[arg-type]
                actor=m["actor"],
                action=m["action"],
                target=m["target"],
                detail=m["detail"],
            )
            for m in (r._mapping for r in rows)
        ]
