"""DSSE v1 envelopes: the pre-authentication encoding and strict parsing.

Spec: https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md

The signature covers ``PAE(type, body)``, never the JSON around it, so a verifier
must (1) check the signature over PAE of the *decoded* payload bytes, then
(2) parse only those verified bytes. Nothing else in the envelope is trusted.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

__all__ = ["Envelope", "EnvelopeFormatError", "b64decode_any", "pae"]


class EnvelopeFormatError(ValueError):
    """The envelope is not a well-formed single-signature DSSE envelope."""


def pae(payload_type: str, body: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body.

    Lengths are ASCII decimal *byte* counts (DSSE protocol.md, "Signature
    definition"); the type is UTF-8 encoded first, so a non-ASCII type is counted
    in bytes, not characters.
    """
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def b64decode_any(text: str, what: str) -> bytes:
    """Decode standard or URL-safe base64 (DSSE allows both), padding optional."""
    if not isinstance(text, str) or not text:
        raise EnvelopeFormatError(f"{what} must be a non-empty base64 string")
    padded = text + "=" * (-len(text) % 4)
    alphabet = b"-_" if ("-" in text or "_" in text) else b"+/"
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeFormatError(f"{what} is not valid base64 ({exc})") from exc


@dataclass(frozen=True)
class Envelope:
    """A parsed (not yet verified) DSSE envelope with exactly one signature."""

    payload_type: str
    payload: bytes
    signature: bytes
    keyid: str

    @classmethod
    def from_json_obj(cls, obj: Any) -> Envelope:
        """Parse without trusting anything; raises EnvelopeFormatError on any oddity.

        Exactly one signature is accepted: OMS key mode writes one, and a second,
        unverified entry would be a place to smuggle ambiguity (which one counts?).
        """
        if not isinstance(obj, dict):
            raise EnvelopeFormatError("dsseEnvelope must be a JSON object")
        payload_type = obj.get("payloadType")
        if not isinstance(payload_type, str) or not payload_type:
            raise EnvelopeFormatError("dsseEnvelope.payloadType must be a non-empty string")
        payload = b64decode_any(obj.get("payload", ""), "dsseEnvelope.payload")
        sigs = obj.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise EnvelopeFormatError("dsseEnvelope.signatures must be a non-empty list")
        if len(sigs) != 1:
            raise EnvelopeFormatError(
                f"dsseEnvelope has {len(sigs)} signatures; exactly one is accepted"
            )
        entry = sigs[0]
        if not isinstance(entry, dict):
            raise EnvelopeFormatError("dsseEnvelope.signatures[0] must be a JSON object")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str):
            raise EnvelopeFormatError("dsseEnvelope.signatures[0].keyid must be a string")
        sig = b64decode_any(entry.get("sig", ""), "dsseEnvelope.signatures[0].sig")
        return cls(payload_type=payload_type, payload=payload, signature=sig, keyid=keyid)

    def to_json_obj(self) -> dict[str, Any]:
        """The envelope as model-signing writes it (standard base64, empty keyid)."""
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"sig": base64.b64encode(self.signature).decode("ascii"), "keyid": self.keyid}
            ],
        }
