"""Errors raised while creating, signing, packing or verifying a bundle.

Every error names the file (or archive member) at fault and what was expected, so
the operator reading it knows what to do. They all derive from `BundleError`, so a
caller that only needs "this bundle is not usable" catches one type; a caller that
reacts differently (an agent reporting a reason code, say) catches the subclass.
"""

from __future__ import annotations

from runtime.manifest import ManifestError

__all__ = [
    "AntiRollbackError",
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
    "ManifestError",
]


class BundleError(Exception):
    """A bundle cannot be created, signed, packed, unpacked or trusted."""

    #: Short machine-readable reason (used in update events and `--json` output).
    reason = "bundle"


class BundleSignatureError(BundleError):
    """`model.sig` is missing, malformed, or not a valid signature by a trusted key."""

    reason = "signature"


class BundleFileSetError(BundleError):
    """The files on disk differ from the signed set (extra, missing, links, specials)."""

    reason = "file_set"


class BundleDigestError(BundleError):
    """A file's bytes differ from the digest that was signed."""

    reason = "digest"


class BundleManifestError(BundleError):
    """`edgeflux.json` is missing, not JSON, or does not match the schema."""

    reason = "manifest"


class BundleCompatibilityError(BundleError):
    """The bundle does not fit this device (runtime version, opset, providers, hardware)."""

    reason = "compatibility"


class BundleRollbackError(BundleError):
    """The bundle's `sequence` is below (or reuses) what this device already committed."""

    reason = "rollback"


class BundleArchiveError(BundleError):
    """An `.efb` archive is malformed, unsafe or over the size caps."""

    reason = "archive"


class BundleOnnxError(BundleError):
    """`policy.onnx` is unsafe (external data, custom ops) or contradicts the I/O spec."""

    reason = "onnx"


class BundleKeyError(BundleError):
    """A signing key or trust-store key cannot be read, written or is of the wrong kind."""

    reason = "key"


class AntiRollbackError(RuntimeError):
    """The counter file cannot be read or written (corrupt, wrong schema, I/O error)."""
