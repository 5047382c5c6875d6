"""The device trust store: trusted public keys by role, one PEM file per key.

Layout (written at flash, rotated through TUF)::

    <dir>/models/<key id>.pem        ECDSA P-256 keys that may sign model bundles
    <dir>/attestation/<key id>.pem   Ed25519 keys that may sign parity attestations

A key id is the hex sha256 of the key's SubjectPublicKeyInfo PEM, exactly what
OpenSSF model signing writes as ``verificationMaterial.publicKey.hint``, so an
operator can match a signature to a file by eye. Ids are always recomputed from
the file's content, never trusted from its name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from runtime.atomicio import atomic_write_bytes, fsync_dir

__all__ = ["ROLES", "PublicKey", "Role", "TrustStore", "TrustStoreError", "key_id"]

Role = Literal["models", "attestation"]
ROLES: tuple[Role, ...] = ("models", "attestation")
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what OMS key mode accepts
_MAX_PEM = 16 * 1024


class TrustStoreError(ValueError):
    """A key cannot be added, removed or read, or is of the wrong kind for its role."""


def key_id(public_key: PublicKey) -> str:
    """Hex sha256 of the SubjectPublicKeyInfo PEM (the OMS ``publicKey.hint``)."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _load(role: str, pem: bytes, source: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise TrustStoreError(f"{source}: not a PEM public key ({exc})") from exc
    if role == "models":
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _EC_CURVES:
            raise TrustStoreError(
                f"{source}: role 'models' takes ECDSA P-256/P-384/P-521 public keys, "
                f"got {type(key).__name__}"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise TrustStoreError(
            f"{source}: role 'attestation' takes Ed25519 public keys, got {type(key).__name__}"
        )
    return key


class TrustStore:
    """Trusted public keys under `directory`, by role."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"TrustStore({str(self.directory)!r})"

    def role_dir(self, role: str) -> Path:
        if role not in ROLES:
            raise TrustStoreError(f"unknown role {role!r}; roles are {list(ROLES)}")
        return self.directory / role

    def add(self, role: str, pem_bytes: bytes) -> str:
        """Trust a public key for `role`; returns its key id (adding twice is harmless)."""
        directory = self.role_dir(role)
        key = _load(role, pem_bytes, f"key for role {role!r}")
        kid = key_id(key)
        directory.mkdir(parents=True, exist_ok=True)
        canonical = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        atomic_write_bytes(directory / f"{kid}.pem", canonical)
        return kid

    def remove(self, role: str, key_id: str) -> None:
        """Stop trusting a key; a unique prefix of at least 8 characters is accepted."""
        kid = self.resolve(role, key_id)
        path = self.role_dir(role) / f"{kid}.pem"
        path.unlink()
        fsync_dir(path.parent)

    def resolve(self, role: str, key_id_or_prefix: str) -> str:
        ids = self.list(role)
        if key_id_or_prefix in ids:
            return key_id_or_prefix
        matches = [k for k in ids if len(key_id_or_prefix) >= 8 and k.startswith(key_id_or_prefix)]
        if len(matches) == 1:
            return matches[0]
        raise TrustStoreError(
            f"key {key_id_or_prefix!r} is not trusted for role {role!r} in "
            f"{self.role_dir(role)} (trusted: {ids or 'none'})"
        )

    def list(self, role: str) -> list[str]:
        """Sorted key ids trusted for `role`."""
        return sorted(self.public_keys(role))

    def public_keys(self, role: str) -> dict[str, PublicKey]:
        """key id -> public key, recomputing each id from the file's content."""
        directory = self.role_dir(role)
        keys: dict[str, PublicKey] = {}
        if not directory.is_dir():
            return keys
        for path in sorted(directory.glob("*.pem")):
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as fh:
                pem = fh.read(_MAX_PEM + 1)
            if len(pem) > _MAX_PEM:
                raise TrustStoreError(f"{path}: larger than {_MAX_PEM} bytes, not a public key")
            key = _load(role, pem, str(path))
            keys[key_id(key)] = key
        return keys
