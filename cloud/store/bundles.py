"""Bundles: the record of every published bundle version."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from cloud.store._base import StoreBase, as_utc, utcnow
from cloud.store.errors import ConflictError
from cloud.store.models import Bundle, table

__all__ = ["BundleQueries", "BundleRecord"]

bundles_t = table(Bundle)


@dataclass(frozen=True)
class BundleRecord:
    name: str
    version: str
    sequence: int
    efb_sha256: str
    size_bytes: int
    target_path: str
    policy_sha256: str = ""
    oms_root_digest: str = ""
    signer_key_id: str = ""
    published_by: str = ""
    published_at: dt.datetime = field(default_factory=utcnow)


def _bundle(row: sa.Row[Any]) -> BundleRecord:
    m = row._mapping
    return BundleRecord(
        name=m["name"],
        version=m["version"],
        sequence=int(m["sequence"]),
        efb_sha256=m["efb_sha256"],
        size_bytes=int(m["size_bytes"]),
        target_path=m["target_path"],
        policy_sha256=m["policy_sha256"],
        oms_root_digest=m["oms_root_digest"],
        signer_key_id=m["signer_key_id"],
        published_by=m["published_by"],
        published_at=as_utc(m["published_at"]),  # type: ignore[arg-type]
    )


class BundleQueries(StoreBase):
    """Reads and writes of the ``bundles`` table."""

    def add_bundle(self, rec: BundleRecord) -> BundleRecord:
        """Record a published bundle; ConflictError if the version or sequence is taken."""
        try:
            with self._tx() as conn:
                conn.execute(
                    bundles_t.insert().values(
                        name=rec.name,
                        version=rec.version,
                        sequence=rec.sequence,
                        policy_sha256=rec.policy_sha256,
                        oms_root_digest=rec.oms_root_digest,
                        efb_sha256=rec.efb_sha256,
                        size_bytes=rec.size_bytes,
                        signer_key_id=rec.signer_key_id,
                        target_path=rec.target_path,
                        published_at=rec.published_at,
                        published_by=rec.published_by,
                    )
                )
                self._audit(
                    conn,
                    rec.published_by,
                    "bundle.publish",
                    f"{rec.name}@{rec.version}",
                    {"sequence": rec.sequence, "sha256": rec.efb_sha256},
                )
        except ConflictError as e:
            raise ConflictError(
                f"bundle {rec.name} {rec.version} (sequence {rec.sequence}) conflicts with a "
                f"published bundle: {e}"
            ) from e
        return rec

    def delete_bundle(self, name: str, version: str) -> None:
        """Undo `add_bundle` (only used when publishing fails after the row was claimed)."""
        with self._tx() as conn:
            conn.execute(
                bundles_t.delete().where(bundles_t.c.name == name, bundles_t.c.version == version)
            )

    def get_bundle(self, name: str, version: str) -> BundleRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                bundles_t.select().where(bundles_t.c.name == name, bundles_t.c.version == version)
            ).first()
        return _bundle(row) if row else None

    def latest_bundle(self, name: str) -> BundleRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                bundles_t.select()
                .where(bundles_t.c.name == name)
                .order_by(bundles_t.c.sequence.desc())
                .limit(1)
            ).first()
        return _bundle(row) if row else None

    def list_bundles(
        self, name: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[BundleRecord]:
        """Newest first (by publish time, then sequence)."""
        q = bundles_t.select()
        if name:
            q = q.where(bundles_t.c.name == name)
        q = (
            q.order_by(bundles_t.c.published_at.desc(), bundles_t.c.sequence.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._connect() as conn:
            return [_bundle(r) for r in conn.execute(q).fetchall()]

    def count_bundles(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(bundles_t)).scalar_one())
