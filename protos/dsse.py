"""DSSE v1 envelopes, the format of every ``SignedEnvelope.dsse_json`` and of ``model.sig``.

Spec: https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md

A signature covers ``PAE(payloadType, payload)``, never the JSON around it, so a
verifier (1) checks a signature over PAE of the *decoded* payload bytes, then
(2) parses only those verified bytes. Nothing else in the envelope is trusted.

This is the one implementation of the pre-authentication encoding and of envelope
parsing in the project; it lives here, beside the wire formats, because every side
(robot, plane, console) may import ``protos``. Keys are `cryptography` objects:
Ed25519, or ECDSA with the hash that fits the curve.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

__all__ = [
    "Envelope",
    "EnvelopeFormatError",
    "PrivateKey",
    "PublicKey",
    "Signature",
    "b64decode_any",
    "pae",
    "sign",
    "signature_verifies",
]

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class EnvelopeFormatError(ValueError):
    """The bytes are not a well-formed DSSE envelope; the message names the field."""


def pae(payload_type: str, body: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body.

    Lengths are ASCII decimal *byte* counts; the type is UTF-8 encoded first, so a
    non-ASCII type is counted in bytes, not characters.
    """
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def b64decode_any(text: object, what: str) -> bytes:
    """Decode standard or URL-safe base64 (DSSE allows both), padding optional."""
    if not isinstance(text, str) or not text:
        raise EnvelopeFormatError(f"{what} must be a non-empty base64 string")
    padded = text + "=" * (-len(text) % 4)
    alphabet = b"-_" if ("-" in text or "_" in text) else b"+/"
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeFormatError(f"{what} is not valid base64 ({exc})") from exc


def _hash_for(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    size = curve.key_size
    if size <= 256:
        return hashes.SHA256()
    if size <= 384:
        return hashes.SHA384()
    return hashes.SHA512()


def signature_verifies(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` over `message` verifies with `key` (False for other key types)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(_hash_for(key.curve)))
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A parsed (not yet verified) DSSE envelope."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        """The bytes every signature of this envelope must cover."""
        return pae(self.payload_type, self.payload)

    @property
    def signature(self) -> bytes:
        """The one signature of a single-signature envelope."""
        if len(self.signatures) != 1:
            raise EnvelopeFormatError(
                f"envelope has {len(self.signatures)} signatures; exactly one is expected"
            )
        return self.signatures[0].sig

    def keys_that_verify(self, keys: Iterable[tuple[str, PublicKey]]) -> list[str]:
        """Ids of the given keys under which some signature verifies, in the order given."""
        message = self.pae()
        return [
            kid
            for kid, key in keys
            if any(signature_verifies(key, s.sig, message) for s in self.signatures)
        ]

    @classmethod
    def from_json_obj(cls, obj: Any, *, what: str = "envelope", single: bool = False) -> Envelope:
        """Parse without trusting anything; raise EnvelopeFormatError on any oddity.

        `single` accepts exactly one signature (a second, unverified entry would be a
        place to smuggle ambiguity: which one counts?).
        """
        if not isinstance(obj, dict):
            raise EnvelopeFormatError(f"{what} must be a JSON object")
        payload_type = obj.get("payloadType")
        if not isinstance(payload_type, str) or not payload_type:
            raise EnvelopeFormatError(f"{what}.payloadType must be a non-empty string")
        payload = b64decode_any(obj.get("payload", ""), f"{what}.payload")
        sigs = obj.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise EnvelopeFormatError(f"{what}.signatures must be a non-empty list")
        if single and len(sigs) != 1:
            raise EnvelopeFormatError(f"{what} has {len(sigs)} signatures; exactly one is accepted")
        parsed = []
        for i, entry in enumerate(sigs):
            if not isinstance(entry, dict):
                raise EnvelopeFormatError(f"{what}.signatures[{i}] must be a JSON object")
            keyid = entry.get("keyid", "")
            if not isinstance(keyid, str):
                raise EnvelopeFormatError(f"{what}.signatures[{i}].keyid must be a string")
            sig = b64decode_any(entry.get("sig", ""), f"{what}.signatures[{i}].sig")
            parsed.append(Signature(keyid, sig))
        return cls(payload_type, payload, tuple(parsed))

    @classmethod
    def from_json(cls, raw: bytes, *, max_bytes: int, what: str = "envelope") -> Envelope:
        """Parse the JSON bytes of an envelope of at most `max_bytes`."""
        if len(raw) > max_bytes:
            raise EnvelopeFormatError(f"{what} is {len(raw)} bytes (limit {max_bytes})")
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeFormatError(f"{what} is not JSON ({exc})") from exc
        return cls.from_json_obj(obj, what=what)

    def to_json_obj(self) -> dict[str, Any]:
        """The envelope with standard base64, as model-signing and securesystemslib write it."""
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"sig": base64.b64encode(s.sig).decode("ascii"), "keyid": s.keyid}
                for s in self.signatures
            ],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_json_obj(), sort_keys=True).encode()


def sign(key: PrivateKey, payload_type: str, payload: bytes, keyid: str = "") -> Envelope:
    """A single-signature envelope over `payload` by `key`."""
    message = pae(payload_type, payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(message)
    else:
        sig = key.sign(message, ec.ECDSA(_hash_for(key.curve)))
    return Envelope(payload_type, payload, (Signature(keyid, sig),))
