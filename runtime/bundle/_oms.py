"""OpenSSF Model Signing (OMS) v1.0 in key mode: the statement and the Sigstore bundle.

Shapes follow what the `model-signing` 1.1 package writes (ossf/model-signing-spec):

* in-toto Statement v1, ``predicateType`` ``https://model_signing/signature/v1.0``,
  ``predicate.resources`` = one ``{name, algorithm, digest}`` per file sorted by
  name, ``predicate.serialization`` = ``{method: "files", hash_type: "sha256",
  allow_symlinks, ignore_paths}``, and one subject whose sha256 is the digest of
  the concatenated raw per-file digests (the "root digest");
* wrapped in a DSSE envelope (payloadType ``application/vnd.in-toto+json``);
* inside a Sigstore bundle v0.3 JSON with ``verificationMaterial.publicKey.hint``
  = hex sha256 of the signer's SubjectPublicKeyInfo PEM and no tlog entries.

This module is pure: bytes and dicts in, bytes and dataclasses out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protos.dsse import Envelope, EnvelopeFormatError

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "IN_TOTO_PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "SIGNATURE_NAME",
    "STATEMENT_TYPE",
    "OmsFormatError",
    "SignedManifest",
    "SigstoreBundle",
    "build_statement",
    "parse_sigstore_bundle",
    "parse_statement",
    "root_digest",
]

SIGNATURE_NAME = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# What model-signing records as ignored by default (git metadata) plus the signature
# itself, which can never sign over its own bytes.
DEFAULT_IGNORE_PATHS = (SIGNATURE_NAME, ".gitattributes", ".gitignore", ".github", ".git")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class OmsFormatError(ValueError):
    """The signature file or its verified payload does not have the OMS v1.0 shape."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "payload" or "digest" keys would let two parsers read two different
    # documents out of the same bytes; refuse instead of picking one.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise OmsFormatError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _loads(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OmsFormatError(f"{what} not JSON ({exc})") from exc
    except RecursionError as exc:
        raise OmsFormatError(f"{what} nested too deeply") from exc


def root_digest(resources: Mapping[str, str]) -> str:
    """sha256 over the concatenated raw per-file digests, in name order (OMS v1.0)."""
    h = hashlib.sha256()
    for name in sorted(resources):
        h.update(bytes.fromhex(resources[name]))
    return h.hexdigest()


def build_statement(model_name: str, resources: Mapping[str, str]) -> bytes:
    """The in-toto statement bytes that get signed (indent 2, like model-signing)."""
    names = sorted(resources)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": [
                {"name": n, "algorithm": "sha256", "digest": resources[n]} for n in names
            ],
            "serialization": {
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(DEFAULT_IGNORE_PATHS),
                "method": "files",
            },
        },
    }
    return json.dumps(statement, indent=2).encode("utf-8")


@dataclass(frozen=True)
class SigstoreBundle:
    """The untrusted outer layer of `model.sig`: who claims to have signed, and the envelope."""

    key_hint: str
    envelope: Envelope

    def to_json(self) -> str:
        obj = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": self.key_hint}, "tlogEntries": []},
            "dsseEnvelope": self.envelope.to_json_obj(),
        }
        return json.dumps(obj, separators=(",", ":"))


def parse_sigstore_bundle(raw: bytes) -> SigstoreBundle:
    """Parse `model.sig` (nothing in it is trusted yet)."""
    obj = _loads(raw, "the file is")
    if not isinstance(obj, dict):
        raise OmsFormatError(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise OmsFormatError(
            f"mediaType is {obj.get('mediaType')!r}; expected {BUNDLE_MEDIA_TYPE!r}"
        )
    material = obj.get("verificationMaterial")
    if not isinstance(material, dict):
        raise OmsFormatError("verificationMaterial is missing")
    public_key = material.get("publicKey")
    if not isinstance(public_key, dict):
        # Certificate or Sigstore (keyless) mode: not accepted on the robot.
        kinds = sorted(k for k in material if k != "tlogEntries")
        raise OmsFormatError(
            f"verificationMaterial has {kinds or 'nothing'}; only key mode (publicKey) is accepted"
        )
    hint = public_key.get("hint") or ""
    if not isinstance(hint, str):
        raise OmsFormatError("verificationMaterial.publicKey.hint must be a string")
    if "dsseEnvelope" not in obj:
        raise OmsFormatError("dsseEnvelope is missing (message signatures are not accepted)")
    try:
        envelope = Envelope.from_json_obj(obj["dsseEnvelope"], what="dsseEnvelope", single=True)
    except EnvelopeFormatError as exc:
        raise OmsFormatError(str(exc)) from exc
    return SigstoreBundle(key_hint=hint, envelope=envelope)


@dataclass(frozen=True)
class SignedManifest:
    """What a *verified* OMS statement says: the file set and its digests."""

    model_name: str
    root_digest: str
    resources: dict[str, str]
    """File name (POSIX, relative to the bundle) -> lowercase hex sha256."""


def _check_resource_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise OmsFormatError(f"resource name {name!r} is not a non-empty string")
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise OmsFormatError(f"resource name {name!r} is not a plain relative path")
    if name == SIGNATURE_NAME:
        raise OmsFormatError(f"resource {name!r} would sign the signature file itself")
    return name


def parse_statement(payload: bytes) -> SignedManifest:
    """Parse the verified DSSE payload as an OMS v1.0 statement and check it is consistent."""
    obj = _loads(payload, "signed payload is")
    if not isinstance(obj, dict):
        raise OmsFormatError("signed payload is not a JSON object")
    if obj.get("_type") != STATEMENT_TYPE:
        raise OmsFormatError(
            f"statement _type is {obj.get('_type')!r}; expected {STATEMENT_TYPE!r}"
        )
    if obj.get("predicateType") != PREDICATE_TYPE:
        raise OmsFormatError(
            f"predicateType is {obj.get('predicateType')!r}; expected {PREDICATE_TYPE!r}"
        )
    subjects = obj.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise OmsFormatError("statement must have exactly one subject")
    subject = subjects[0]
    digest = subject.get("digest")
    claimed_root = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(claimed_root, str) or not _HEX64.match(claimed_root):
        raise OmsFormatError("subject digest.sha256 must be 64 lowercase hex characters")
    predicate = obj.get("predicate")
    if not isinstance(predicate, dict):
        raise OmsFormatError("predicate is missing")
    serialization = predicate.get("serialization")
    if not isinstance(serialization, dict):
        raise OmsFormatError("predicate.serialization is missing")
    if serialization.get("method") != "files":
        raise OmsFormatError(
            f"serialization method {serialization.get('method')!r} is not supported; "
            "sign with method 'files'"
        )
    if serialization.get("hash_type") != "sha256":
        raise OmsFormatError(
            f"hash_type {serialization.get('hash_type')!r} is not supported; sign with sha256"
        )
    items = predicate.get("resources")
    if not isinstance(items, list) or not items:
        raise OmsFormatError("predicate.resources must list at least one file")
    resources: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            raise OmsFormatError("each predicate.resources entry must be an object")
        name = _check_resource_name(item.get("name"))
        if item.get("algorithm") != "sha256":
            raise OmsFormatError(f"resource {name!r} uses {item.get('algorithm')!r}, not sha256")
        value = item.get("digest")
        if not isinstance(value, str) or not _HEX64.match(value):
            raise OmsFormatError(f"resource {name!r} digest is not 64 lowercase hex characters")
        if name in resources:
            raise OmsFormatError(f"resource {name!r} is listed twice")
        resources[name] = value
    # The root digest is over the resources in the order they are listed
    # (model-signing sorts them); recompute it in that order.
    h = hashlib.sha256()
    for item in items:
        h.update(bytes.fromhex(item["digest"]))
    if h.hexdigest() != claimed_root:
        raise OmsFormatError(
            f"subject digest {claimed_root} does not match the resources ({h.hexdigest()})"
        )
    subject_name = subject.get("name")
    return SignedManifest(
        model_name=subject_name if isinstance(subject_name, str) else "",
        root_digest=claimed_root,
        resources=resources,
    )
