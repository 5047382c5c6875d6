"""Parity attestations in the control-plane store (table ``attestations``).

Rows are immutable: a new campaign adds a row, never edits one. The envelope bytes
are stored exactly as signed; the indexed columns are copies of what the signed
statement says, for lookup only — consumers verify the envelope, never the columns.
Migration: ``attestations_0001`` (alembic branch ``attestations`` off ``0001``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from cloud.store.errors import ConflictError, StoreUnavailable

__all__ = ["AttestationRecord", "AttestationStore"]

_md = sa.MetaData()
attestations_t = sa.Table(
    "attestations",
    _md,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("policy_sha256", sa.String(64), nullable=False),
    sa.Column("root_digest", sa.String(64), nullable=False),
    sa.Column("bundle_name", sa.String(64), nullable=False),
    sa.Column("bundle_version", sa.String(64), nullable=False),
    sa.Column("bundle_sequence", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.String(32), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every stamp is stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class AttestationRecord:
    policy_sha256: str
    root_digest: str
    bundle_name: str
    bundle_version: str
    bundle_sequence: int
    verdict: str
    key_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    envelope: bytes
    created_by: str = ""

    @property
    def id(self) -> str:
        """Content address: sha256 of the envelope bytes."""
        return hashlib.sha256(self.envelope).hexdigest()


def _record(row: sa.Row[Any]) -> AttestationRecord:
    return AttestationRecord(
        policy_sha256=row.policy_sha256,
        root_digest=row.root_digest,
        bundle_name=row.bundle_name,
        bundle_version=row.bundle_version,
        bundle_sequence=int(row.bundle_sequence),
        verdict=row.verdict,
        key_id=row.key_id,
        issued_at=_utc(row.issued_at),
        expires_at=_utc(row.expires_at),
        envelope=bytes(row.envelope),
        created_by=row.created_by,
    )


class AttestationStore:
    """Attestations over a store engine (the store's migrations create the table)."""

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

    def put(self, rec: AttestationRecord) -> AttestationRecord:
        """Add `rec`; adding the same envelope twice is harmless."""
        with self._conn(write=True) as conn:
            exists = conn.execute(
                sa.select(attestations_t.c.id).where(attestations_t.c.id == rec.id)
            ).first()
            if exists is None:
                conn.execute(
                    attestations_t.insert().values(
                        id=rec.id,
                        policy_sha256=rec.policy_sha256,
                        root_digest=rec.root_digest,
                        bundle_name=rec.bundle_name,
                        bundle_version=rec.bundle_version,
                        bundle_sequence=rec.bundle_sequence,
                        verdict=rec.verdict,
                        key_id=rec.key_id,
                        issued_at=rec.issued_at.astimezone(dt.UTC),
                        expires_at=rec.expires_at.astimezone(dt.UTC),
                        envelope=rec.envelope,
                        created_by=rec.created_by,
                    )
                )
        return rec

    def for_policy(
        self, policy_sha256: str, now: dt.datetime | None = None
    ) -> AttestationRecord | None:
        """The attestation to serve for a policy digest.

        The newest unexpired "attested" one if any — a later inconclusive re-run does not
        revoke a valid attestation (revocation is expiry or key rotation) — else the newest
        of any verdict, so a robot learns the specific reason it is refused.
        """
        at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        t = attestations_t
        with self._conn() as conn:
            row = conn.execute(
                sa.select(t)
                .where(t.c.policy_sha256 == policy_sha256)
                .where(t.c.verdict == "attested")
                .where(t.c.expires_at > at)
                .order_by(t.c.issued_at.desc())
                .limit(1)
            ).first()
            if row is None:
                row = conn.execute(
                    sa.select(t)
                    .where(t.c.policy_sha256 == policy_sha256)
                    .order_by(t.c.issued_at.desc())
                    .limit(1)
                ).first()
        return None if row is None else _record(row)

    def list(
        self, bundle_name: str = "", *, limit: int = 100, offset: int = 0
    ) -> list[AttestationRecord]:
        """Newest first, optionally for one bundle name."""
        t = attestations_t
        query = sa.select(t).order_by(t.c.issued_at.desc(), t.c.id).limit(limit).offset(offset)
        if bundle_name:
            query = query.where(t.c.bundle_name == bundle_name)
        with self._conn() as conn:
            return [_record(r) for r in conn.execute(query)]
