"""Parity attestations for published bundles, signed with the plane home's key and
stored as `edgeflux attest run --home` stores them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloud.attest import statement
from cloud.attest.service import record_from_envelope
from cloud.store import BundleRecord
from cloud.store.attestations import AttestationStore
from cloud.testing import RunningPlane
from runtime.trust import TrustStore


def envelope(
    key: statement.AttestationKey,
    *,
    policy_sha256: str,
    root_digest: str,
    name: str = "pendulum",
    verdict: str = "attested",
    expires_in_s: float = 30 * 86400,
    issued_at: datetime | None = None,
) -> bytes:
    issued = issued_at or datetime.now(UTC) - timedelta(minutes=1)
    stmt = statement.build_statement(
        policy_sha256=policy_sha256,
        root_digest=root_digest,
        bundle_name=name,
        predicate={"verdict": verdict, "bundle": {"name": name}},
        issued_at=issued,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
    )
    return statement.envelope_bytes(statement.sign_statement(stmt, key))


def attest(
    plane: RunningPlane,
    rec: BundleRecord,
    *,
    verdict: str = "attested",
    expires_in_s: float = 30 * 86400,
) -> None:
    """Store an attestation for the published bundle `rec` in the plane."""
    key = statement.load_key(plane.home.key_path("attestation", private=True))
    raw = envelope(
        key,
        policy_sha256=rec.policy_sha256,
        root_digest=rec.oms_root_digest,
        name=rec.name,
        verdict=verdict,
        expires_in_s=expires_in_s,
    )
    trusted = TrustStore(plane.home.trust).public_keys("attestation")
    AttestationStore(plane.store.engine).put(record_from_envelope(raw, trusted, created_by="t"))
