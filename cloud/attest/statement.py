"""The parity attestation as an in-toto Statement v1 in a DSSE envelope (Ed25519).

Statement (in-toto attestation spec v1)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "policy.onnx", "digest": {"sha256": <policy.onnx>}},
                 {"name": "<bundle name>", "digest": {"sha256": <OMS root digest>}}],
     "predicateType": "https://edgeflux.dev/attestation/parity/v1",
     "predicate": {... verdict, issued_at, expires_at, tasks, gates, ...}}

Both subjects bind the evidence to bytes: the policy file the robot will run, and
the OMS root digest over every file of the signed bundle (so a manifest change
also invalidates the attestation). The envelope is signed through securesystemslib
(`CryptoSigner`) with the signature's keyid set to the trust-store key id (hex
sha256 of the SubjectPublicKeyInfo PEM, as `runtime.trust` computes it), so a robot
finds the key by id. `Envelope.verify` does not look at payloadType; `verify_envelope`
checks it itself before parsing the verified payload.

The robot has its own verifier over `cryptography` (`fleet.attestation`); tests run
the same refusal matrix against both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib import exceptions as sslib_exc
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from runtime.atomicio import atomic_write_bytes
from runtime.trust import key_id as trust_key_id

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "AttestationKey",
    "StatementError",
    "VerifiedStatement",
    "build_statement",
    "envelope_bytes",
    "generate_key",
    "key_id",
    "load_key",
    "load_public_key",
    "parse_time",
    "sign_statement",
    "verify_envelope",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://edgeflux.dev/attestation/parity/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
POLICY_SUBJECT = "policy.onnx"
_MAX_ENVELOPE = 4 * 1024 * 1024


class StatementError(ValueError):
    """An attestation is malformed, wrongly signed, or does not apply.

    `reason` is a stable code (the same codes as `fleet.attestation`):
    malformed, payload_type, untrusted_key, bad_signature, statement_type,
    predicate_type, subject_mismatch, verdict, expired, not_yet_valid.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """Hex sha256 of the SubjectPublicKeyInfo PEM: the trust store's id for the key."""
    return trust_key_id(public_key)


def _sslib_key(public_key: ed25519.Ed25519PublicKey) -> SSlibKey:
    return SSlibKey.from_crypto(public_key, keyid=key_id(public_key), scheme="ed25519")


@dataclass(frozen=True)
class AttestationKey:
    """An Ed25519 signing key for attestations, with its trust-store key id."""

    private_key: ed25519.Ed25519PrivateKey

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def signer(self) -> CryptoSigner:
        return CryptoSigner(self.private_key, _sslib_key(self.public_key))


def generate_key(private_path: str | os.PathLike[str]) -> AttestationKey:
    """Create an Ed25519 key; writes the private PEM (0600) and `<path>.pub` beside it."""
    path = Path(private_path)
    if path.exists():
        raise StatementError("malformed", f"{path} exists; refusing to overwrite a key")
    key = AttestationKey(ed25519.Ed25519PrivateKey.generate())
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pem, mode=0o600)
    atomic_write_bytes(path.with_name(path.name + ".pub"), key.public_pem())
    return key


def load_key(private_path: str | os.PathLike[str]) -> AttestationKey:
    path = Path(private_path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise StatementError(
            "malformed", f"{path}: not a readable PEM private key ({exc})"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise StatementError(
            "malformed", f"{path}: attestation keys are Ed25519, got {type(key).__name__}"
        )
    return AttestationKey(key)


def load_public_key(pem: bytes, source: str = "public key") -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise StatementError("malformed", f"{source}: not a PEM public key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise StatementError("malformed", f"{source}: expected Ed25519, got {type(key).__name__}")
    return key


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, field: str) -> datetime:
    if not isinstance(text, str):
        raise StatementError("malformed", f"predicate.{field} must be an RFC 3339 string")
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise StatementError("malformed", f"predicate.{field} {text!r} is not RFC 3339") from exc
    if at.tzinfo is None:
        raise StatementError("malformed", f"predicate.{field} {text!r} has no time zone")
    return at


def build_statement(
    *,
    policy_sha256: str,
    root_digest: str,
    bundle_name: str,
    predicate: dict[str, Any],
    issued_at: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    """The in-toto Statement binding `predicate` to the policy bytes and the bundle."""
    for label, digest in (("policy_sha256", policy_sha256), ("root_digest", root_digest)):
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise StatementError("malformed", f"{label} must be 64 lower-case hex, got {digest!r}")
    if not expires_at > issued_at:
        raise StatementError("malformed", "expires_at must be after issued_at")
    body = dict(predicate)
    body["issued_at"] = _rfc3339(issued_at)
    body["expires_at"] = _rfc3339(expires_at)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": POLICY_SUBJECT, "digest": {"sha256": policy_sha256}},
            {"name": bundle_name, "digest": {"sha256": root_digest}},
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": body,
    }


def sign_statement(
    statement: dict[str, Any], key: AttestationKey, payload_type: str = PAYLOAD_TYPE
) -> dict[str, Any]:
    """DSSE-sign the canonical JSON of `statement`; returns the envelope as a dict."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=payload_type, signatures={})
    envelope.sign(key.signer())
    return envelope.to_dict()


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """The envelope as the bytes stored and served (`SignedEnvelope.dsse_json`)."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class VerifiedStatement:
    statement: dict[str, Any]
    key_id: str
    policy_sha256: str
    root_digest: str
    bundle_name: str
    verdict: str
    issued_at: datetime
    expires_at: datetime

    @property
    def predicate(self) -> dict[str, Any]:
        predicate: dict[str, Any] = self.statement["predicate"]
        return predicate


def verify_envelope(
    raw: bytes,
    trusted: dict[str, ed25519.Ed25519PublicKey] | list[ed25519.Ed25519PublicKey],
    *,
    policy_sha256: str | None = None,
    root_digest: str | None = None,
    now: datetime | None = None,
    require_attested: bool = True,
    check_time: bool = True,
) -> VerifiedStatement:
    """Verify signature, payloadType, statement shape, subject, verdict and validity time.

    Raises StatementError with a specific `reason`. Only the verified payload is parsed.
    `check_time` False skips the expiry check (for indexing and showing old attestations).
    """
    keys = list(trusted.values()) if isinstance(trusted, dict) else list(trusted)
    if len(raw) > _MAX_ENVELOPE:
        raise StatementError("malformed", f"envelope is {len(raw)} bytes (max {_MAX_ENVELOPE})")
    try:
        obj = json.loads(raw)
        # securesystemslib's Envelope.from_dict mutates its argument: it gets a private copy.
        envelope = Envelope.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError, sslib_exc.FormatError) as exc:
        raise StatementError("malformed", f"not a DSSE envelope: {exc}") from exc
    if not isinstance(obj, dict) or not envelope.signatures:
        raise StatementError("malformed", "the DSSE envelope carries no signature")
    if envelope.payload_type != PAYLOAD_TYPE:
        raise StatementError(
            "payload_type",
            f"payloadType is {envelope.payload_type!r}; attestations use {PAYLOAD_TYPE!r}",
        )
    by_id = {key_id(k): k for k in keys}
    signed_ids = list(envelope.signatures)
    known = [kid for kid in signed_ids if kid in by_id]
    if not known:
        raise StatementError(
            "untrusted_key",
            f"signed by key {', '.join(i[:16] for i in signed_ids)} which is not a trusted "
            f"attestation key (trusted: {', '.join(i[:16] for i in by_id) or 'none'})",
        )
    try:
        accepted = envelope.verify([_sslib_key(by_id[kid]) for kid in known], 1)
    except sslib_exc.VerificationError as exc:
        raise StatementError(
            "bad_signature",
            f"the signature by trusted key {known[0][:16]} does not match the payload "
            "(the attestation was altered after signing)",
        ) from exc
    return _check_statement(
        envelope.payload,
        next(iter(accepted)),
        policy_sha256=policy_sha256,
        root_digest=root_digest,
        now=now,
        require_attested=require_attested,
        check_time=check_time,
    )


def _check_statement(
    payload: bytes,
    kid: str,
    *,
    policy_sha256: str | None,
    root_digest: str | None,
    now: datetime | None,
    require_attested: bool,
    check_time: bool,
) -> VerifiedStatement:
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise StatementError("malformed", f"the signed payload is not JSON: {exc}") from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise StatementError("statement_type", f"the payload is not an in-toto {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise StatementError(
            "predicate_type",
            f"predicateType is {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}",
        )
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    if not isinstance(predicate, dict) or not isinstance(subjects, list) or len(subjects) != 2:
        raise StatementError("malformed", "the statement needs a predicate and two subjects")
    digests: dict[str, str] = {}
    for s in subjects:
        if not isinstance(s, dict) or not isinstance(s.get("digest"), dict):
            raise StatementError("malformed", "each subject needs a name and a digest")
        digests[str(s.get("name"))] = str(s["digest"].get("sha256", ""))
    got_policy = digests.pop(POLICY_SUBJECT, "")
    bundle_name, got_root = next(iter(digests.items()), ("", ""))
    if policy_sha256 is not None and got_policy != policy_sha256:
        raise StatementError(
            "subject_mismatch",
            f"the attestation is for policy.onnx sha256 {got_policy[:16]}…, "
            f"the bundle's is {policy_sha256[:16]}…",
        )
    if root_digest is not None and got_root != root_digest:
        raise StatementError(
            "subject_mismatch",
            f"the attestation is for bundle root digest {got_root[:16]}…, "
            f"the bundle's is {root_digest[:16]}…",
        )
    issued = parse_time(predicate.get("issued_at"), "issued_at")
    expires = parse_time(predicate.get("expires_at"), "expires_at")
    verdict = predicate.get("verdict")
    if require_attested and verdict != "attested":
        raise StatementError("verdict", f"the attestation's verdict is {verdict!r}, not 'attested'")
    at = now or datetime.now(UTC)
    if check_time and at >= expires:
        raise StatementError("expired", f"the attestation expired at {_rfc3339(expires)}")
    if check_time and at < issued:
        raise StatementError("not_yet_valid", f"the attestation is issued at {_rfc3339(issued)}")
    return VerifiedStatement(
        statement=statement,
        key_id=kid,
        policy_sha256=got_policy,
        root_digest=got_root,
        bundle_name=bundle_name,
        verdict=str(verdict),
        issued_at=issued,
        expires_at=expires,
    )
