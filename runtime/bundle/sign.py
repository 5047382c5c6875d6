"""Key generation and OMS v1.0 key-mode signing (runs in the cloud / on a dev box).

The output is byte-for-byte the shape `model-signing` writes (see `_oms`), and is
verified in tests by `model-signing` itself. Only `cryptography` is used, so the
same code signs on a machine without the sigstore stack.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protos.dsse import sign as dsse_sign
from runtime.atomicio import atomic_write_bytes, atomic_write_text
from runtime.bundle._files import ProgressFn, hash_open_file, open_regular, walk_bundle
from runtime.bundle._oms import (
    IN_TOTO_PAYLOAD_TYPE,
    SIGNATURE_NAME,
    SigstoreBundle,
    build_statement,
)
from runtime.bundle.errors import BundleFileSetError, BundleKeyError, BundleManifestError
from runtime.bundle.onnx_checks import check_external_data, check_io_matches, read_info
from runtime.manifest import MANIFEST_NAME, ManifestError, parse_manifest
from runtime.trust import key_id

__all__ = ["generate_signing_key", "load_signing_key", "sign_bundle"]

_POLICY = "policy.onnx"


def generate_signing_key(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str],
    passphrase: bytes | None = None,
) -> str:
    """Write a new ECDSA P-256 key pair as PEM (private: PKCS#8, mode 0600); return its id.

    Refuses to overwrite either file: losing a signing key by a typo is not undoable.
    """
    priv, pub = Path(private_path), Path(public_path)
    for p in (priv, pub):
        if p.exists():
            raise BundleKeyError(f"{p}: already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    priv.parent.mkdir(parents=True, exist_ok=True)
    pub.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(priv, private_pem, mode=0o600)
    atomic_write_bytes(pub, public_pem, mode=0o644)
    return key_id(key.public_key())


def load_signing_key(
    private_key_path: str | os.PathLike[str], passphrase: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    path = Path(private_key_path)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise BundleKeyError(f"{path}: cannot read the signing key ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(pem, passphrase or None)
    except TypeError as exc:
        hint = "it is encrypted: give the passphrase" if passphrase is None else str(exc)
        raise BundleKeyError(f"{path}: cannot load the signing key ({hint})") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleKeyError(f"{path}: not a PEM private key, or wrong passphrase ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise BundleKeyError(f"{path}: bundle signing keys are ECDSA P-256")
    return key


def sign_bundle(
    bundle_dir: str | os.PathLike[str],
    private_key_path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Path:
    """Sign every file of `bundle_dir` and write `model.sig`; return its path.

    Refuses (and writes nothing) if the bundle would fail verification anyway:
    links or special files, a manifest that does not parse, or an I/O spec that
    contradicts the graph.
    """
    bdir = Path(bundle_dir)
    key = load_signing_key(private_key_path, passphrase)
    files, _dirs = walk_bundle(bdir)
    for required in (_POLICY, MANIFEST_NAME):
        if required not in files:
            raise BundleFileSetError(f"{bdir}: {required} is missing; nothing to sign")
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    manifest_bytes: bytes | None = None
    for name in files:
        with open_regular(bdir / name, str(bdir)) as fh:
            sizes[name] = os.fstat(fh.fileno()).st_size
            digests[name], data = hash_open_file(fh, keep_bytes=1 << 20, progress=progress)
        if name == MANIFEST_NAME:
            manifest_bytes = data
    try:
        manifest = parse_manifest(manifest_bytes or b"", str(bdir / MANIFEST_NAME))
    except ManifestError as exc:
        raise BundleManifestError(str(exc)) from exc
    info = read_info(bdir / _POLICY)
    check_external_data(info, bdir / _POLICY, sizes)
    check_io_matches(info, bdir / _POLICY, manifest)

    payload = build_statement(bdir.resolve().name, digests)
    bundle = SigstoreBundle(
        key_hint=key_id(key.public_key()),
        envelope=dsse_sign(key, IN_TOTO_PAYLOAD_TYPE, payload),
    )
    out = bdir / SIGNATURE_NAME
    atomic_write_text(out, bundle.to_json())
    return out
