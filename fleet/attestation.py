"""Robot-side parity attestation check and the `require_parity_attestation` policy.

Before a staged bundle may be activated (update state ATTESTING), the
agent fetches the attestation for the bundle's policy digest from the control plane
and checks, in this order, refusing with a stable reason code at the first failure:

1. ``malformed``      the bytes are a single DSSE envelope (standard or URL-safe base64)
2. ``payload_type``   payloadType is ``application/vnd.in-toto+json``
3. ``untrusted_key``  the signature's keyid is a trusted attestation key (Ed25519)
4. ``bad_signature``  Ed25519 over PAE(payloadType, payload) verifies
5. ``statement_type`` / ``predicate_type``  the *verified* payload is an in-toto
   Statement v1 with predicateType ``https://edgeflux.dev/attestation/parity/v1``
6. ``subject_mismatch`` subjects equal the staged bundle's policy.onnx sha256 and
   OMS root digest
7. ``verdict``        the predicate's verdict is ``attested``
8. ``expired`` / ``not_yet_valid``  now is within [issued_at, expires_at)

This is deliberately a small verifier over `cryptography` (no scipy, no cloud code):
the cloud signs through securesystemslib, and tests run the same refusal matrix
against both implementations. Key ids are those of `runtime.trust` (hex sha256 of
the SubjectPublicKeyInfo PEM), so trusted keys come straight from
``TrustStore(dir).public_keys("attestation")``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from protos import attestation_pb2, attestation_pb2_grpc
from protos.dsse import Envelope, EnvelopeFormatError, signature_verifies
from runtime.trust import key_id

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "UNREACHABLE",
    "ActivationDecision",
    "AttestationPolicy",
    "AttestationRefused",
    "Reason",
    "VerifiedAttestation",
    "check_activation",
    "grpc_fetcher",
    "grpc_fetcher_with_fallback",
    "verify_attestation",
]

log = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://edgeflux.dev/attestation/parity/v1"
POLICY_SUBJECT = "policy.onnx"
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""gRPC failures that mean "the plane's port is unreachable" (not "the plane refused")."""

Reason = Literal[
    "missing",
    "fetch_failed",
    "malformed",
    "payload_type",
    "untrusted_key",
    "bad_signature",
    "statement_type",
    "predicate_type",
    "subject_mismatch",
    "verdict",
    "expired",
    "not_yet_valid",
]


class AttestationRefused(Exception):
    """The bundle may not be activated: `reason` is a stable code, the message says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True)
class VerifiedAttestation:
    key_id: str
    policy_sha256: str
    root_digest: str
    verdict: str
    issued_at: datetime
    expires_at: datetime
    predicate: dict[str, Any]


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise AttestationRefused("malformed", f"predicate.{field} must be an RFC 3339 string")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AttestationRefused(
            "malformed", f"predicate.{field} {value!r} is not RFC 3339"
        ) from exc
    if at.tzinfo is None:
        raise AttestationRefused("malformed", f"predicate.{field} {value!r} has no time zone")
    return at


def verify_attestation(
    raw: bytes,
    trusted_keys: Mapping[str, ed25519.Ed25519PublicKey],
    *,
    policy_sha256: str,
    root_digest: str,
    now: datetime | None = None,
) -> VerifiedAttestation:
    """Check an attestation envelope against the staged bundle; raise AttestationRefused."""
    try:
        envelope = Envelope.from_json(raw, max_bytes=MAX_ENVELOPE_BYTES, what="the attestation")
    except EnvelopeFormatError as exc:
        raise AttestationRefused("malformed", str(exc)) from exc
    if envelope.payload_type != PAYLOAD_TYPE:
        raise AttestationRefused(
            "payload_type", f"payloadType is {envelope.payload_type!r}; expected {PAYLOAD_TYPE!r}"
        )
    # Ids are recomputed from the key material, never taken from a file name.
    keys = {key_id(k): k for k in trusted_keys.values()}
    candidates = [s for s in envelope.signatures if s.keyid in keys]
    if not candidates:
        signed = ", ".join(s.keyid[:16] or "<none>" for s in envelope.signatures)
        raise AttestationRefused(
            "untrusted_key",
            f"signed by {signed}, not a trusted attestation key "
            f"(trusted: {', '.join(k[:16] for k in keys) or 'none'})",
        )
    message = envelope.pae()
    verified = [s.keyid for s in candidates if signature_verifies(keys[s.keyid], s.sig, message)]
    if not verified:
        raise AttestationRefused(
            "bad_signature",
            "no signature by a trusted key verifies: the attestation was altered after signing",
        )
    payload, verified_kid = envelope.payload, verified[0]
    return _check(payload, verified_kid, policy_sha256, root_digest, now or datetime.now(UTC))


def _check(
    payload: bytes, kid: str, policy_sha256: str, root_digest: str, now: datetime
) -> VerifiedAttestation:
    # Only the verified bytes are parsed.
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AttestationRefused("malformed", "the signed payload is not JSON") from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise AttestationRefused("statement_type", f"the payload is not an {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise AttestationRefused(
            "predicate_type",
            f"predicateType {statement.get('predicateType')!r} is not {PREDICATE_TYPE!r}",
        )
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    if not isinstance(predicate, dict) or not isinstance(subjects, list):
        raise AttestationRefused("malformed", "the statement needs a predicate and subjects")
    digests: list[tuple[str, str]] = []
    for s in subjects:
        if not isinstance(s, dict) or not isinstance(s.get("digest"), dict):
            raise AttestationRefused("malformed", "each subject needs a name and a digest")
        digests.append((str(s.get("name")), str(s["digest"].get("sha256", ""))))
    policy = [d for n, d in digests if n == POLICY_SUBJECT]
    others = [d for n, d in digests if n != POLICY_SUBJECT]
    if len(policy) != 1 or len(others) != 1:
        raise AttestationRefused(
            "malformed", "subjects must be policy.onnx and exactly one bundle root digest"
        )
    if policy[0] != policy_sha256:
        raise AttestationRefused(
            "subject_mismatch",
            f"attestation covers policy.onnx {policy[0][:16]}…, staged bundle has "
            f"{policy_sha256[:16]}…",
        )
    if others[0] != root_digest:
        raise AttestationRefused(
            "subject_mismatch",
            f"attestation covers bundle root {others[0][:16]}…, staged bundle has "
            f"{root_digest[:16]}…",
        )
    verdict = predicate.get("verdict")
    issued = _time(predicate.get("issued_at"), "issued_at")
    expires = _time(predicate.get("expires_at"), "expires_at")
    if verdict != "attested":
        raise AttestationRefused("verdict", f"the campaign's verdict is {verdict!r}")
    if now >= expires:
        raise AttestationRefused("expired", f"the attestation expired at {expires.isoformat()}")
    if now < issued:
        raise AttestationRefused(
            "not_yet_valid", f"the attestation is issued at {issued.isoformat()} (clock skew?)"
        )
    return VerifiedAttestation(
        key_id=kid,
        policy_sha256=policy[0],
        root_digest=others[0],
        verdict=verdict,
        issued_at=issued,
        expires_at=expires,
        predicate=predicate,
    )


@dataclass(frozen=True)
class AttestationPolicy:
    """Device policy. With `require_parity_attestation` off, activation never waits on it."""

    require_parity_attestation: bool = False


@dataclass(frozen=True)
class ActivationDecision:
    allowed: bool
    reason: str  # "not_required", "attested", or an AttestationRefused reason code
    message: str
    attestation: VerifiedAttestation | None = None


def check_activation(
    policy: AttestationPolicy,
    *,
    policy_sha256: str,
    root_digest: str,
    fetch: Callable[[str], bytes | None],
    trusted_keys: Mapping[str, ed25519.Ed25519PublicKey],
    now: datetime | None = None,
) -> ActivationDecision:
    """Decide whether a staged bundle may be activated under `policy`.

    `fetch(policy_sha256)` returns the DSSE envelope bytes, None when the control plane
    has no attestation (gRPC NOT_FOUND), or raises on transport failure. The agent
    publishes a refusal as an event with `reason`.
    """
    if not policy.require_parity_attestation:
        return ActivationDecision(True, "not_required", "parity attestation not required")
    try:
        raw = fetch(policy_sha256)
    except Exception as exc:  # the fetcher is a plug point: any failure refuses
        return ActivationDecision(
            False, "fetch_failed", f"could not fetch the attestation for {policy_sha256}: {exc}"
        )
    if raw is None:
        return ActivationDecision(
            False, "missing", f"no parity attestation exists for policy.onnx {policy_sha256}"
        )
    try:
        verified = verify_attestation(
            raw, trusted_keys, policy_sha256=policy_sha256, root_digest=root_digest, now=now
        )
    except AttestationRefused as exc:
        return ActivationDecision(False, exc.reason, str(exc))
    return ActivationDecision(
        True,
        "attested",
        f"attested by key {verified.key_id[:16]} until {verified.expires_at.isoformat()}",
        verified,
    )


def grpc_fetcher(channel: grpc.Channel, timeout_s: float = 5.0) -> Callable[[str], bytes | None]:
    """A `fetch` for `check_activation` over the control plane's AttestationService.

    NOT_FOUND means "no attestation" (None); any other gRPC error propagates and
    refuses activation as ``fetch_failed``.
    """
    stub = attestation_pb2_grpc.AttestationServiceStub(channel)  # type: ignore[no-untyped-call]

    def fetch(policy_sha256: str) -> bytes | None:
        request = attestation_pb2.GetAttestationRequest(subject_sha256=policy_sha256)
        try:
            reply = stub.GetAttestation(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return bytes(reply.envelope.dsse_json)

    return fetch


def grpc_fetcher_with_fallback(
    channel: grpc.Channel, fallback: Callable[[str], bytes | None], timeout_s: float = 5.0
) -> Callable[[str], bytes | None]:
    """:func:`grpc_fetcher`, asking `fallback` instead when the plane's gRPC port is
    unreachable (:data:`UNREACHABLE`); NOT_FOUND and every other answer stay gRPC's."""
    over_grpc = grpc_fetcher(channel, timeout_s)

    def fetch(policy_sha256: str) -> bytes | None:
        try:
            return over_grpc(policy_sha256)
        except grpc.RpcError as exc:
            if exc.code() not in UNREACHABLE:
                raise
            log.warning(
                "parity attestation: the plane's gRPC is %s; asking over MQTT", exc.code().name
            )
            return fallback(policy_sha256)

    return fetch
