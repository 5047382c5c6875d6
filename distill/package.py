"""Packaging: the exported policy + a filled-in manifest → a signed bundle directory.

The bundle is built and signed in a staging directory beside `out_dir` and renamed
into place only when everything succeeded, so a bad signing key or a failed check
leaves nothing at `out_dir`. Signing and the bundle format belong to
`runtime.bundle`; this module only fills the manifest (I/O spec read back from the
graph, bounds, control rate, fallback, provenance).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from distill.envs import EnvSpec
from distill.errors import PackagingError
from runtime.bundle import BundleError, create_bundle, io_spec_from_onnx, sign_bundle
from runtime.bundle.sign import load_signing_key
from runtime.manifest import BundleManifest, ControlSpec, IOSpec, Provenance

__all__ = ["build_manifest", "check_signing_key", "package_bundle"]


def build_manifest(
    *,
    onnx_path: Path,
    spec: EnvSpec,
    name: str,
    version: str,
    sequence: int,
    provenance: dict[str, Any],
    fallback: Literal["hold", "zero", "safe"] = "zero",
) -> BundleManifest:
    """The runtime manifest for a student of `spec` exported at `onnx_path`."""
    inputs, outputs = io_spec_from_onnx(onnx_path)
    period_ms = 1000.0 / spec.rate_hz
    try:
        return BundleManifest(
            name=name,
            version=version,
            sequence=sequence,
            io=IOSpec(
                inputs=inputs,
                outputs=outputs,
                obs_low=spec.obs_low.tolist(),
                obs_high=spec.obs_high.tolist(),
                action_low=spec.act_low.tolist(),
                action_high=spec.act_high.tolist(),
            ),
            # A 64x64 MLP runs in microseconds; a fifth of the period leaves room for I/O.
            control=ControlSpec(
                rate_hz=spec.rate_hz, deadline_ms=round(period_ms / 5, 3), fallback=fallback
            ),
            provenance=Provenance(**provenance),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise PackagingError(f"bundle manifest for {name} {version} is invalid: {exc}") from exc


def check_signing_key(sign_key: str | os.PathLike[str], passphrase: bytes | None = None) -> None:
    """Raise PackagingError unless `sign_key` is a loadable ECDSA P-256 private key."""
    try:
        load_signing_key(sign_key, passphrase)
    except BundleError as exc:
        raise PackagingError(str(exc)) from exc


def package_bundle(
    onnx_bytes: bytes | Path,
    manifest_args: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    sign_key: str | os.PathLike[str] | None,
    passphrase: bytes | None = None,
) -> tuple[Path, BundleManifest]:
    """Write `out_dir` = policy.onnx + edgeflux.json (+ model.sig when `sign_key` is given).

    `onnx_bytes`: the model's bytes, or the path of a saved model whose ONNX external
    data files lie beside it (``ExportResult.save``): they are copied, checked against
    the graph and signed with it."""
    out = Path(out_dir)
    if out.exists():
        raise PackagingError(f"{out}: already exists; choose another --out or remove it")
    if sign_key is not None:
        check_signing_key(sign_key, passphrase)  # fail before any work is written
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        if isinstance(onnx_bytes, Path):
            onnx_path = onnx_bytes
        else:
            onnx_path = staging / "policy.onnx"
            onnx_path.write_bytes(onnx_bytes)
        manifest = build_manifest(onnx_path=onnx_path, **manifest_args)
        # The OMS statement names the directory, so build under the final name.
        bundle = create_bundle(onnx_path, manifest, staging / out.name)
        if sign_key is not None:
            sign_bundle(bundle, sign_key, passphrase)
        os.rename(bundle, out)
    except BundleError as exc:
        raise PackagingError(f"could not package {out}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, manifest
