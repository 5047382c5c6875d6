"""Local verification of parity attestations (DSSE, Ed25519) for the attestations screen.

The console does not take the plane's word for a verdict: it checks the envelope's
signature against attestation keys the operator trusts (`--attestation-keys`), then
reads the in-toto Statement. DSSE signs PAE(payloadType, payload), not the JSON
(DSSE protocol spec, "Signature definition").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protos.dsse import Envelope, EnvelopeFormatError

__all__ = [
    "TrustedKey",
    "TrustedKeyError",
    "Verification",
    "load_trusted_keys",
    "verify_envelope",
]


MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


class TrustedKeyError(ValueError):
    """A trusted-key file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    key: Ed25519PublicKey
    source: str


@dataclass
class Verification:
    """The outcome of checking one envelope; `statement` is set only when it parsed."""

    ok: bool
    detail: str
    keyid: str = ""
    payload_type: str = ""
    statement: dict[str, Any] | None = None
    signer_sources: list[str] = field(default_factory=list)


def _pem_keyid(key: Ed25519PublicKey) -> str:
    # the project's trust-store key id (runtime.trust.key_id): hex sha256 of
    # the SubjectPublicKeyInfo PEM; the plane signs with it as the DSSE keyid
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _keyid(public_raw: bytes) -> str:
    # securesystemslib's keyid: sha256 of the canonical JSON of the public key dict
    key = {
        "keytype": "ed25519",
        "keyval": {"public": public_raw.hex()},
        "scheme": "ed25519",
    }
    canon = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def _load_one(path: Path) -> TrustedKey:
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        try:
            obj = json.loads(data)
            raw = bytes.fromhex(obj["keyval"]["public"])
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise TrustedKeyError(
                f"{path}: expected a securesystemslib ed25519 key "
                f'({{"keytype": "ed25519", "keyval": {{"public": "<hex>"}}}}): {exc}'
            ) from exc
        return TrustedKey(str(obj.get("keyid") or _keyid(raw)), key, str(path))
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise TrustedKeyError(f"{path}: not a PEM public key: {exc}") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise TrustedKeyError(f"{path}: attestation keys are Ed25519, got {type(loaded).__name__}")
    return TrustedKey(_pem_keyid(loaded), loaded, str(path))


def load_trusted_keys(path: Path | None) -> list[TrustedKey]:
    """Ed25519 keys from a file or from every *.pem / *.pub / *.json file in a directory."""
    if path is None:
        return []
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in (".pem", ".pub", ".json") and p.is_file()
        )
    elif path.is_file():
        files = [path]
    else:
        raise TrustedKeyError(f"attestation keys: {path} does not exist")
    return [_load_one(p) for p in files]


def verify_envelope(dsse_json: bytes, keys: list[TrustedKey]) -> Verification:
    """Check the envelope's signatures against `keys`; parse the statement only if one verifies."""
    try:
        env = Envelope.from_json(dsse_json, max_bytes=MAX_ENVELOPE_BYTES)
    except EnvelopeFormatError as exc:
        return Verification(False, f"malformed DSSE envelope: {exc}")
    payload_type = env.payload_type
    if not keys:
        return Verification(
            False,
            "no trusted attestation keys given (--attestation-keys): signature NOT checked",
            payload_type=payload_type,
        )
    # try the key each signature names first, then the rest
    named = {s.keyid for s in env.signatures}
    ordered = sorted(keys, key=lambda k: k.keyid not in named)
    signers = env.keys_that_verify((str(i), tk.key) for i, tk in enumerate(ordered))
    if signers:
        tk = ordered[int(signers[0])]
        try:
            statement = json.loads(env.payload)
        except ValueError as exc:
            return Verification(False, f"signature valid but payload is not JSON: {exc}")
        if not isinstance(statement, dict):
            return Verification(False, "signature valid but payload is not a JSON object")
        return Verification(
            True,
            f"signature verified with trusted key {tk.keyid[:16]}… ({Path(tk.source).name})",
            keyid=tk.keyid,
            payload_type=payload_type,
            statement=statement,
            signer_sources=[tk.source],
        )
    return Verification(
        False,
        f"no signature verifies with the {len(keys)} trusted attestation key(s)",
        payload_type=payload_type,
    )
