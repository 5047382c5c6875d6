"""On-robot bundle verification: our own code over `cryptography` only.

The order is fixed, and each step trusts only what the previous ones
proved:

1. `model.sig` parses as an OMS key-mode Sigstore bundle; its key hint names a key
   in the trust store's "models" role; the ECDSA signature over
   PAE(payloadType, payload) verifies with that key (DSSE protocol.md);
2. the payloadType is in-toto JSON and only the verified payload bytes are parsed,
   as an OMS v1.0 statement whose root digest matches its resources;
3. the files on disk are exactly the signed set (no extra, no missing, no links,
   no special files);
4. every file's streamed sha256 equals the signed digest;
5. `edgeflux.json` (the bytes just hashed) matches the schema;
6. `policy.onnx` (the descriptor just hashed) is safe and agrees with the manifest;
   each external-data tensor lies inside a signed file of the bundle;
7. the device can run it (runtime version, opset, providers, hardware tags);
8. its `sequence` is not below the committed anti-rollback counter.

Nothing here imports the sigstore stack (a test checks `sys.modules`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from protos.dsse import signature_verifies
from runtime.bundle._files import ProgressFn, hash_open_file, open_regular, walk_bundle
from runtime.bundle._oms import (
    IN_TOTO_PAYLOAD_TYPE,
    SIGNATURE_NAME,
    OmsFormatError,
    SignedManifest,
    parse_sigstore_bundle,
    parse_statement,
)
from runtime.bundle._onnxwire import OnnxWireError, read_onnx_info
from runtime.bundle.archive import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_TOTAL_BYTES, unpack_bundle
from runtime.bundle.compat import DeviceProfile, check_compatibility
from runtime.bundle.create import POLICY_NAME
from runtime.bundle.errors import (
    AntiRollbackError,
    BundleDigestError,
    BundleFileSetError,
    BundleManifestError,
    BundleOnnxError,
    BundleRollbackError,
    BundleSignatureError,
)
from runtime.bundle.onnx_checks import check_external_data, check_io_matches, check_operators
from runtime.manifest import MANIFEST_NAME, BundleManifest, ManifestError, parse_manifest
from runtime.trust import PublicKey, TrustStore, TrustStoreError

__all__ = [
    "RollbackCounters",
    "VerifiedBundle",
    "unpack_and_verify",
    "verify_bundle",
    "verify_signature",
]


class RollbackCounters(Protocol):
    """The device's committed sequences (`runtime.antirollback.AntiRollbackStore`)."""

    def check(self, name: str, sequence: int, root_digest: str | None = None) -> None:
        """Raise BundleRollbackError if (name, sequence, digest) would go back;
        AntiRollbackError if the counters cannot be read."""


_MAX_SIG_BYTES = 16 << 20
_MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check, and what was proven about it."""

    path: Path
    manifest: BundleManifest
    policy_sha256: str
    root_digest: str
    signer_key_id: str
    files: dict[str, str]
    """Signed file name -> sha256 hex (model.sig excluded)."""
    external_data: tuple[str, ...] = ()
    """The files holding the policy's external tensor data (load the policy by path)."""


def _verify_with(key: PublicKey, signature: bytes, message: bytes) -> bool:
    # Model-signing keys are ECDSA; OMS key mode pairs each curve with its hash.
    return isinstance(key, ec.EllipticCurvePublicKey) and signature_verifies(
        key, signature, message
    )


def _short(ids: list[str]) -> str:
    return ", ".join(f"{k[:12]}…" for k in ids) or "none"


def verify_signature(bundle_dir: Path, trust: TrustStore) -> tuple[SignedManifest, str]:
    """Steps 1-2: verify `model.sig` and return (the signed statement, signer key id)."""
    sig_path = bundle_dir / SIGNATURE_NAME
    where = f"{sig_path}"
    try:
        fh = open_regular(sig_path, str(bundle_dir))
    except BundleFileSetError as exc:
        raise BundleSignatureError(
            f"{where}: missing or not a regular file; sign the bundle with `edgeflux bundle sign`"
        ) from exc
    with fh:
        # Read what fstat says (+1 to notice growth), not the cap: a cap-sized read
        # would allocate the cap up front.
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(min(size, _MAX_SIG_BYTES) + 1)
    if len(raw) > _MAX_SIG_BYTES:
        raise BundleSignatureError(f"{where}: larger than {_MAX_SIG_BYTES} bytes")
    try:
        sb = parse_sigstore_bundle(raw)
    except OmsFormatError as exc:
        raise BundleSignatureError(f"{where}: not an OMS key-mode signature: {exc}") from exc

    store = trust.role_dir("models")
    try:
        keys = trust.public_keys("models")
    except (TrustStoreError, OSError) as exc:
        # A damaged trust store must refuse (fail closed) as a bundle error callers expect.
        raise BundleSignatureError(f"{where}: cannot read the trust store {store}: {exc}") from exc
    if not keys:
        raise BundleSignatureError(
            f"{where}: no model-signing keys are trusted in {store}; "
            "add one with `edgeflux bundle trust add`"
        )
    message = sb.envelope.pae()
    if sb.key_hint:
        key = keys.get(sb.key_hint)
        if key is None:
            raise BundleSignatureError(
                f"{where}: signed by key {sb.key_hint[:12]}… which is not in {store} "
                f"(trusted: {_short(sorted(keys))})"
            )
        if not _verify_with(key, sb.envelope.signature, message):
            raise BundleSignatureError(
                f"{where}: the signature does not verify with trusted key {sb.key_hint[:12]}… "
                "(the signed payload or signature was altered, or another key signed it)"
            )
        signer = sb.key_hint
    else:
        # Older model-signing output carries no hint: try each trusted key.
        matching = [k for k, v in keys.items() if _verify_with(v, sb.envelope.signature, message)]
        if not matching:
            raise BundleSignatureError(
                f"{where}: the signature verifies with none of the trusted keys in {store} "
                f"(trusted: {_short(sorted(keys))})"
            )
        signer = matching[0]
    if sb.envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise BundleSignatureError(
            f"{where}: payloadType is {sb.envelope.payload_type!r}; "
            f"expected {IN_TOTO_PAYLOAD_TYPE!r}"
        )
    try:
        signed = parse_statement(sb.envelope.payload)
    except OmsFormatError as exc:
        raise BundleSignatureError(f"{where}: signed statement is not OMS v1.0: {exc}") from exc
    return signed, signer


def _check_file_set(bundle_dir: Path, signed: SignedManifest) -> None:
    files, dirs = walk_bundle(bundle_dir)
    expected = set(signed.resources)
    extra = sorted(set(files) - expected)
    missing = sorted(expected - set(files))
    if extra:
        raise BundleFileSetError(
            f"{bundle_dir}: {extra} are not covered by the signature (signed: {sorted(expected)})"
        )
    if missing:
        raise BundleFileSetError(f"{bundle_dir}: signed files {missing} are missing")
    parts = [n.split("/")[:-1] for n in expected]
    needed_dirs = {"/".join(p[: i + 1]) for p in parts for i in range(len(p))}
    stray = sorted(set(dirs) - needed_dirs)
    if stray:
        raise BundleFileSetError(f"{bundle_dir}: directories {stray} are not part of the bundle")
    for required in (POLICY_NAME, MANIFEST_NAME):
        if required not in expected:
            raise BundleFileSetError(f"{bundle_dir}: the signed set lacks {required}")


def verify_bundle(
    bundle_dir: str | os.PathLike[str],
    trust: TrustStore,
    *,
    counters: RollbackCounters | None = None,
    device: DeviceProfile | None = None,
    progress: ProgressFn | None = None,
) -> VerifiedBundle:
    """Verify a bundle directory in place; raise a `BundleError` subclass at the first failure.

    `device` None skips the compatibility step and `counters` None the anti-rollback
    step (cloud-side checks); a robot passes both. The counter is only read here:
    advancing it is `AntiRollbackStore.commit`, after the new bundle proved healthy.
    `progress`, if given, is called with each number of bytes hashed.
    """
    bdir = Path(bundle_dir)
    signed, signer = verify_signature(bdir, trust)
    _check_file_set(bdir, signed)

    with ExitStack() as stack:
        files: dict[str, str] = {}
        sizes: dict[str, int] = {}
        policy_fh: BinaryIO | None = None
        manifest_bytes: bytes | None = None
        for name, expected in sorted(signed.resources.items()):
            fh = open_regular(bdir / name, str(bdir))
            if name == POLICY_NAME:
                # Kept open: the ONNX checks read the very bytes just hashed.
                policy_fh = stack.enter_context(fh)
            sizes[name] = os.fstat(fh.fileno()).st_size
            try:
                keep = _MAX_MANIFEST_BYTES if name == MANIFEST_NAME else 0
                actual, data = hash_open_file(fh, keep_bytes=keep, progress=progress)
            finally:
                if name != POLICY_NAME:
                    fh.close()
            if actual != expected:
                raise BundleDigestError(
                    f"{bdir}: {name} has sha256 {actual[:16]}…, the signature says "
                    f"{expected[:16]}…; the file was modified after signing, or "
                    f"{SIGNATURE_NAME} belongs to another bundle"
                )
            files[name] = actual
            if name == MANIFEST_NAME:
                manifest_bytes = data

        if manifest_bytes is None:
            raise BundleManifestError(f"{bdir / MANIFEST_NAME}: larger than {_MAX_MANIFEST_BYTES}")
        try:
            manifest = parse_manifest(manifest_bytes, str(bdir / MANIFEST_NAME))
        except ManifestError as exc:
            raise BundleManifestError(str(exc)) from exc

        assert policy_fh is not None  # _check_file_set guaranteed it is signed
        policy_path = bdir / POLICY_NAME
        try:
            info = read_onnx_info(policy_fh)
        except OnnxWireError as exc:
            raise BundleOnnxError(f"{policy_path}: not a valid ONNX model ({exc})") from exc
    check_external_data(info, policy_path, sizes)
    check_operators(info, policy_path, device.allowed_custom_ops if device else ())
    check_io_matches(info, policy_path, manifest)

    if device is not None:
        check_compatibility(manifest, device, str(bdir))
    if counters is not None:
        try:
            counters.check(manifest.name, manifest.sequence, signed.root_digest)
        except AntiRollbackError as exc:
            raise BundleRollbackError(
                f"{bdir}: cannot check anti-rollback for {manifest.name!r}: {exc}"
            ) from exc

    return VerifiedBundle(
        path=bdir,
        manifest=manifest,
        policy_sha256=files[POLICY_NAME],
        root_digest=signed.root_digest,
        signer_key_id=signer,
        files=files,
        external_data=tuple(sorted({PurePosixPath(r.location).as_posix() for r in info.external})),
    )


def unpack_and_verify(
    efb_path: str | os.PathLike[str],
    staging_dir: str | os.PathLike[str],
    trust: TrustStore,
    *,
    counters: RollbackCounters | None = None,
    device: DeviceProfile | None = None,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> VerifiedBundle:
    """Unpack an `.efb` into the new `staging_dir` and verify it there, in place.

    The returned bundle's path *is* `staging_dir`: use it where it is (or rename the
    directory as a whole), so nothing can change between verification and use. If
    unpacking or verification fails, `staging_dir` is removed again.
    """
    staging = unpack_bundle(
        efb_path, staging_dir, max_members=max_members, max_total_bytes=max_total_bytes
    )
    try:
        return verify_bundle(staging, trust, counters=counters, device=device)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
