"""Signed tree heads of the router's audit log, kept in the store as a witness.

Each head the plane signs is also written here (`HeadStore.add`), so deleting heads
from the log file, truncating it or rewriting it after a head is caught by
`cloud.router.audit.verify_log(..., witness=...)` even when the file alone looks
consistent. Rows are only ever inserted: a second, different head for the same
(log, size) is refused, never overwritten.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from cloud.router.errors import AuditError

__all__ = ["HeadStore"]

_md = sa.MetaData()
heads_t = sa.Table(
    "router_audit_heads",
    _md,
    sa.Column("log_id", sa.String(200), primary_key=True),
    sa.Column("size", sa.BigInteger, primary_key=True),
    sa.Column("root", sa.String(64), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("sig", sa.Text, nullable=False),
)


class HeadStore:
    """Tree heads per audit log (run the store's migrations first)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> HeadStore:
        from cloud.store import Store

        return cls(Store.open(url, pool_size=2, migrate=migrate).engine)

    def add(self, log_id: str, head: dict[str, Any]) -> None:
        """Keep `head`; the same head again is a no-op, a different one an AuditError."""
        row = {
            "log_id": log_id,
            "size": int(head["size"]),
            "root": str(head["root"]),
            "time": float(head["time"]),
            "key_id": str(head["key_id"]),
            "sig": str(head["sig"]),
        }
        try:
            with self.engine.begin() as conn:
                old = conn.execute(
                    sa.select(heads_t.c.root).where(
                        heads_t.c.log_id == log_id, heads_t.c.size == row["size"]
                    )
                ).scalar_one_or_none()
                if old is None:
                    conn.execute(heads_t.insert().values(**row))
                elif old != row["root"]:
                    raise AuditError(
                        f"audit log {log_id!r}: a different tree head of size {row['size']} "
                        "is already recorded (the log was rewritten)"
                    )
        except exc.DBAPIError as e:
            raise AuditError(f"cannot record a tree head in {self.engine.url!r}: {e.orig}") from e

    def heads(self, log_id: str) -> list[dict[str, Any]]:
        """The log's heads in the form they have in the log, smallest first."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(heads_t).where(heads_t.c.log_id == log_id).order_by(heads_t.c.size)
                ).all()
        except exc.DBAPIError as e:
            raise AuditError(f"cannot read tree heads from {self.engine.url!r}: {e.orig}") from e
        return [
            {
                "kind": "tree_head",
                "size": r.size,
                "root": r.root,
                "time": r.time,
                "key_id": r.key_id,
                "sig": r.sig,
            }
            for r in rows
        ]
