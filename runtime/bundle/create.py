"""Build a bundle directory from an ONNX policy and a manifest (cloud side, unsigned)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

from runtime.atomicio import atomic_write_text, fsync_dir
from runtime.bundle._files import open_regular
from runtime.bundle.errors import BundleError, BundleOnnxError
from runtime.bundle.onnx_checks import (
    check_external_data,
    check_io_matches,
    check_operators,
    external_files,
    read_info,
)
from runtime.manifest import MANIFEST_NAME, BundleManifest

__all__ = ["POLICY_NAME", "create_bundle"]

POLICY_NAME = "policy.onnx"


def _with_graph_opset(manifest: BundleManifest, graph_opset: int | None) -> BundleManifest:
    """Fill compatibility.opset from the graph unless the caller set it explicitly."""
    explicit = (
        "compatibility" in manifest.model_fields_set
        and "opset" in manifest.compatibility.model_fields_set
    )
    if graph_opset is None or explicit:
        return manifest
    compat = manifest.compatibility.model_copy(update={"opset": graph_opset})
    return manifest.model_copy(update={"compatibility": compat})


def _copy_regular(src_dir: Path, name: str, dst_dir: Path) -> int:
    """Copy `src_dir/name` (a plain file, not a link) to `dst_dir/name`; return its size."""
    dst = dst_dir / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = open_regular(src_dir / name, str(src_dir))
    except BundleError as exc:
        raise BundleOnnxError(f"{src_dir / name}: external data file unusable: {exc}") from exc
    with src, open(dst, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
        return out.tell()


def create_bundle(
    onnx_path: str | os.PathLike[str],
    manifest: BundleManifest,
    out_dir: str | os.PathLike[str],
    *,
    allowed_custom_ops: Collection[str] = (),
) -> Path:
    """Create bundle directory `out_dir` holding `policy.onnx` and `edgeflux.json`.

    The policy is copied first, with the external-data files it names (relative to
    it, same layout), and every check runs on the copy (so the source changing
    underneath cannot slip past): a valid ONNX model, external data confined to the
    copied files and inside their sizes, no custom-domain operators outside
    `allowed_custom_ops`, and an I/O spec and opset that say what the graph really
    is. The directory appears atomically (built beside it, then renamed); `out_dir`
    must not exist or be empty. Returns `out_dir`.
    """
    source = Path(onnx_path)
    out = Path(out_dir)
    if not source.is_file():
        raise BundleOnnxError(f"{source}: no such ONNX file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: already exists and is not an empty directory; nothing written")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        policy = staging / POLICY_NAME
        shutil.copyfile(source, policy)
        info = read_info(policy)
        sizes = {
            name: _copy_regular(source.parent, name, staging)
            for name in external_files(info, source)
        }
        check_external_data(info, source, sizes)
        check_operators(info, source, allowed_custom_ops)
        manifest = _with_graph_opset(manifest, info.opsets.get("ai.onnx"))
        check_io_matches(info, source, manifest)
        atomic_write_text(staging / MANIFEST_NAME, manifest.to_json())
        with open(policy, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(staging, 0o755)
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        fsync_dir(out.parent)
    return out
