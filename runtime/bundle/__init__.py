"""Signed model bundles: the root of the robot's trust chain (docs/bundle-spec.md).

A bundle is a directory of `policy.onnx`, `edgeflux.json` and `model.sig` (an
OpenSSF Model Signing v1.0 signature, key mode, ECDSA P-256), or one `.efb` tar.

Cloud side::

    inputs, outputs = io_spec_from_onnx("policy.onnx")
    create_bundle("policy.onnx", manifest, "out/pendulum-1.0.0")
    generate_signing_key("keys/signing.pem", "keys/signing.pub")
    sign_bundle("out/pendulum-1.0.0", "keys/signing.pem")
    pack_bundle("out/pendulum-1.0.0", "out/pendulum-1.0.0.efb")

Robot side::

    verified = unpack_and_verify("pendulum-1.0.0.efb", slot_dir / "staging",
                                 TrustStore(layout.trust),
                                 counters=AntiRollbackStore(layout.antirollback),
                                 device=DeviceProfile.local())
    ...  # stage, warm, switch, health window, then:
    counters.commit(verified.manifest.name, verified.manifest.sequence, verified.root_digest)

Verification imports only `cryptography` (never the sigstore stack).
"""

from runtime.bundle._oms import SIGNATURE_NAME
from runtime.bundle.archive import pack_bundle, unpack_bundle
from runtime.bundle.compat import DeviceProfile
from runtime.bundle.create import POLICY_NAME, create_bundle
from runtime.bundle.errors import (
    BundleArchiveError,
    BundleCompatibilityError,
    BundleDigestError,
    BundleError,
    BundleFileSetError,
    BundleKeyError,
    BundleManifestError,
    BundleOnnxError,
    BundleRollbackError,
    BundleSignatureError,
)
from runtime.bundle.onnx_checks import io_spec_from_onnx
from runtime.bundle.sign import generate_signing_key, sign_bundle
from runtime.bundle.verify import VerifiedBundle, unpack_and_verify, verify_bundle

__all__ = [
    "POLICY_NAME",
    "SIGNATURE_NAME",
    "BundleArchiveError",
    "BundleCompatibilityError",
    "BundleDigestError",
    "BundleError",
    "BundleFileSetError",
    "BundleKeyError",
    "BundleManifestError",
    "BundleOnnxError",
    "BundleRollbackError",
    "BundleSignatureError",
    "DeviceProfile",
    "VerifiedBundle",
    "create_bundle",
    "generate_signing_key",
    "io_spec_from_onnx",
    "pack_bundle",
    "sign_bundle",
    "unpack_and_verify",
    "unpack_bundle",
    "verify_bundle",
]
