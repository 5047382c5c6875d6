"""`edgeflux bundle verify` and `inspect`: check a bundle as a robot would, show what it holds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgeflux._bundle_common import (
    hashing_progress,
    home_trust_dir,
    out_console,
    trust_options,
    trust_store,
    user_errors,
)
from runtime.antirollback import AntiRollbackStore
from runtime.bundle import (
    BundleError,
    DeviceProfile,
    unpack_bundle,
    verify_bundle,
)
from runtime.bundle._files import hash_open_file, open_regular, walk_bundle
from runtime.bundle._oms import SIGNATURE_NAME, OmsFormatError, parse_sigstore_bundle
from runtime.bundle.archive import DEFAULT_MAX_TOTAL_BYTES
from runtime.bundle.chunking import chunk_file
from runtime.bundle.compat import check_compatibility
from runtime.layout import RobotLayout
from runtime.manifest import MANIFEST_NAME, ManifestError, parse_manifest
from runtime.trust import TrustStore

__all__ = ["inspect", "verify"]


@contextlib.contextmanager
def _as_directory(target: Path, max_bytes: int | None = None) -> Iterator[Path]:
    """A bundle directory for `target`: itself, or a temporary unpack of an .efb file."""
    if not target.exists():
        raise click.ClickException(
            f"{target}: no such bundle (expected a bundle directory or a .efb file)"
        )
    if target.is_dir():
        yield target
        return
    if target.suffix != ".efb":
        raise click.ClickException(
            f"{target} is a plain file, not a bundle: give the bundle directory (holding "
            "policy.onnx, edgeflux.json, model.sig) or a .efb file from `bundle pack`"
        )
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-efb-"))
    try:
        yield unpack_bundle(
            target, tmp / "bundle", max_total_bytes=max_bytes or DEFAULT_MAX_TOTAL_BYTES
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@trust_options
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Control-plane home: verify against its trust store (instead of --trust-dir).",
)
@click.option(
    "--counters",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Anti-rollback counter file [default: none, or <root>'s with --device].",
)
@click.option(
    "--device/--no-device",
    default=False,
    help="Also check compatibility with this machine (and <root>'s counters).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    target: Path,
    root: Path,
    trust_dir: Path | None,
    home_dir: Path | None,
    counters: Path | None,
    device: bool,
    as_json: bool,
) -> None:
    """Verify a bundle directory or .efb.

    Checks, in order: signature by a trusted key, the exact file set, every digest,
    the manifest, the ONNX graph, and with --device this machine's compatibility and
    the anti-rollback counter (read only). Exit 0 only if everything holds.
    """
    if home_dir is not None:
        if trust_dir is not None:
            raise click.UsageError("give --home or --trust-dir, not both")
        trust_dir = home_trust_dir(home_dir)
    with user_errors():
        trust = trust_store(root, trust_dir)
        if counters is None and device:
            counters = RobotLayout.at(root).antirollback
        store = AntiRollbackStore(counters) if counters else None
        profile = DeviceProfile.local() if device else None
        try:
            with _as_directory(target) as bdir, hashing_progress(bdir, "verifying") as advance:
                verified = verify_bundle(
                    bdir, trust, counters=store, device=profile, progress=advance
                )
        except BundleError as exc:
            if as_json:
                # Scripts reading --json get the refusal as data too (and exit 1).
                failure = {
                    "ok": False,
                    "bundle": str(target),
                    "error": type(exc).__name__,
                    "reason": exc.reason,
                    "message": str(exc),
                }
                click.echo(json.dumps(failure))
                raise SystemExit(1) from exc
            raise
    m = verified.manifest
    result = {
        "ok": True,
        "bundle": str(target),
        "name": m.name,
        "version": m.version,
        "sequence": m.sequence,
        "signer_key_id": verified.signer_key_id,
        "root_digest": verified.root_digest,
        "policy_sha256": verified.policy_sha256,
        "files": verified.files,
        "checked": ["signature", "file_set", "digests", "manifest", "onnx"]
        + (["compatibility"] if profile else [])
        + (["anti_rollback"] if store else []),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"OK {m.name} {m.version} (sequence {m.sequence}) signed by "
            f"{verified.signer_key_id[:16]}…, root digest {verified.root_digest[:16]}…"
        )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _inspect_dir(bdir: Path, trust: TrustStore | None) -> dict[str, Any]:
    files, _ = walk_bundle(bdir)
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for name in files:
        with open_regular(bdir / name, str(bdir)) as fh:
            sizes[name] = os.fstat(fh.fileno()).st_size
            digests[name], _data = hash_open_file(fh)
    report: dict[str, Any] = {"files": digests, "sizes": sizes, "total_bytes": sum(sizes.values())}
    sig_path = bdir / SIGNATURE_NAME
    if sig_path.is_file():
        try:
            sb = parse_sigstore_bundle(sig_path.read_bytes())
            report["signer_key_id"] = sb.key_hint or None
        except OmsFormatError as exc:
            report["signature_error"] = str(exc)
    else:
        report["signer_key_id"] = None
    if MANIFEST_NAME not in digests:
        raise ManifestError(f"{bdir / MANIFEST_NAME}: missing; is {bdir} a bundle?")
    manifest = parse_manifest((bdir / MANIFEST_NAME).read_bytes(), str(bdir / MANIFEST_NAME))
    report["manifest"] = json.loads(manifest.to_json())
    profile = DeviceProfile.local()
    try:
        check_compatibility(manifest, profile, str(bdir))
        report["compatible_here"] = True
    except BundleError as exc:
        report["compatible_here"] = False
        report["incompatibility"] = str(exc)
    if trust is not None:
        try:
            verify_bundle(bdir, trust)
            report["verified"] = True
        except BundleError as exc:
            report["verified"] = False
            report["verify_error"] = f"{type(exc).__name__}: {exc}"
    return report


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--trust-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also verify against this trust store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect(target: Path, trust_dir: Path | None, as_json: bool) -> None:
    """Show manifest, signer, digests, I/O spec, compatibility.

    TARGET is a bundle directory or an .efb. The signer key id shown is the one the
    signature claims; pass --trust-dir to also verify it.
    """
    with user_errors(), _as_directory(target) as bdir:
        report = _inspect_dir(bdir, TrustStore(trust_dir) if trust_dir else None)
    report["bundle"] = str(target)
    if target.is_file():  # an archive is what the plane splits into chunks for robots
        chunks = chunk_file(target)
        report["chunks"] = {"count": len(chunks), "archive_bytes": sum(n for _, n in chunks)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    m = report["manifest"]
    out = out_console()
    summary = Table(title=f"bundle {target}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    summary.add_row("name", m["name"])
    summary.add_row("version", m["version"])
    summary.add_row("sequence", str(m["sequence"]))
    summary.add_row("created", str(m.get("created_at", "")))
    summary.add_row("signer key id (claimed)", report.get("signer_key_id") or "unsigned")
    if "verified" in report:
        summary.add_row("verified", "yes" if report["verified"] else report["verify_error"])
    c = m["compatibility"]
    summary.add_row("min runtime", c["min_runtime_version"])
    summary.add_row("opset", str(c["opset"]))
    summary.add_row("providers", ", ".join(c["execution_providers"]))
    summary.add_row("hardware tags", ", ".join(c["hardware_tags"]) or "-")
    summary.add_row(
        "compatible here",
        "yes" if report["compatible_here"] else f"no: {report.get('incompatibility')}",
    )
    ctl = m["control"]
    summary.add_row(
        "control",
        f"{ctl['rate_hz']} Hz, deadline {ctl['deadline_ms']} ms, fallback {ctl['fallback']}",
    )
    if "chunks" in report:
        c = report["chunks"]
        summary.add_row("chunks", f"{c['count']} (archive {_human(c['archive_bytes'])})")
    out.print(summary)
    io = Table(title="I/O spec")
    for col in ("direction", "name", "shape", "dtype"):
        io.add_column(col)
    for direction in ("inputs", "outputs"):
        for t in m["io"][direction]:
            io.add_row(direction[:-1], t["name"], str(t["shape"]), t["dtype"])
    out.print(io)
    files = Table(title=f"files ({_human(report['total_bytes'])} in all)")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    for name, digest in report["files"].items():
        files.add_row(name, _human(report["sizes"][name]), digest)
    out.print(files)
