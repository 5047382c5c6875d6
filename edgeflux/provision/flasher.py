"""The flash procedure: verify first, refuse to clobber, write, read back, verify, record.

1. The bundle verifies against the trust anchors being flashed (nothing written otherwise).
2. A target holding another device's identity is refused unless `force`.
3. Free space is checked before the first byte is written.
4. Files are written (unchanged ones skipped), then every file is re-read from the
   target and its digest compared, and the bundle is verified again from the bytes
   read back (signature, file set, digests).
5. Only then the completion record (`etc/edgeflux/flash.json`) is written, so a
   flash killed at any point is visibly unfinished and a re-run completes it.
"""

from __future__ import annotations

import bisect
import itertools
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from edgeflux.provision._plan import IDENTITY_CERT, RECORD_PATH, FlashMaterials, build_plan
from edgeflux.provision.errors import FlashError
from edgeflux.provision.targets import Target
from runtime.bundle import BundleError, VerifiedBundle, verify_bundle
from runtime.trust import TrustStore

__all__ = ["FlashReport", "flash"]

_SPACE_MARGIN = 1.05


@dataclass(frozen=True)
class FlashReport:
    device_id: str
    target: str
    plan_digest: str
    files_total: int
    files_written: int
    bytes_written: int
    bundle: str
    seconds: float


def _cert_cn(pem: bytes) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _verify_bundle(bundle_dir: Path, trust_dir: Path, where: str) -> VerifiedBundle:
    try:
        return verify_bundle(bundle_dir, TrustStore(trust_dir))
    except BundleError as exc:
        raise FlashError(f"bundle {where} does not verify: {exc}") from exc


def flash(
    materials: FlashMaterials,
    target: Target,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
    log: Callable[[str], None] = lambda msg: None,
    files_progress: Callable[[int, int], None] = lambda done, total: None,
) -> FlashReport:
    """Flash `materials` onto `target`; see the module docstring for the guarantees."""
    start = time.monotonic()
    verified = _verify_bundle(materials.bundle_dir, materials.trust_dir, str(materials.bundle_dir))
    plan = build_plan(materials)

    existing = target.read_file(IDENTITY_CERT)
    if existing is not None:
        other = _cert_cn(existing)
        if other != materials.device_id and not force:
            raise FlashError(
                f"{target.description} already holds the identity of device {other!r}, "
                f"not {materials.device_id!r}; pass --force to overwrite it (nothing was written)"
            )
    target.prepare(int(plan.total_bytes * _SPACE_MARGIN) + (1 << 20))

    paths = [e.path for e in plan.entries]
    have = target.digests(paths)
    todo = [e for e in plan.entries if have.get(e.path) != e.sha256]
    total = sum(e.size for e in todo)
    log(f"writing {len(todo)} of {len(plan.entries)} files ({total / 1e6:.1f} MB)")
    written = 0
    # A file is done once the bytes written reach the end of it (written in plan order).
    ends = list(itertools.accumulate(e.size for e in todo))
    files_progress(0, len(todo))

    def tick(n: int) -> None:
        nonlocal written
        written += n
        progress(written, total)
        files_progress(bisect.bisect_right(ends, written), len(todo))

    target.write(todo, tick)
    files_progress(len(todo), len(todo))

    log("verifying: re-reading every file from the target")
    after = target.digests(paths)
    wrong = [e.path for e in plan.entries if after.get(e.path) != e.sha256]
    if wrong:
        raise FlashError(
            f"{target.description}: {len(wrong)} files differ after writing (first: {wrong[0]}); "
            "re-run the flash"
        )
    with tempfile.TemporaryDirectory(prefix="edgeflux-flash-verify-") as tmp:
        bundle_paths = [p for p in paths if p.startswith(plan.bundle_path + "/")]
        trust_paths = [p for p in paths if p.startswith(plan.trust_path + "/")]
        target.fetch(bundle_paths + trust_paths, Path(tmp))
        again = _verify_bundle(
            Path(tmp) / plan.bundle_path, Path(tmp) / plan.trust_path, "read back from target"
        )
        if again.root_digest != verified.root_digest:
            raise FlashError(f"{target.description}: bundle read back differs from the source")

    record = plan.record()
    target.write([record], lambda n: None)
    doc = target.read_file(RECORD_PATH)
    if doc is None or json.loads(doc).get("plan_digest") != plan.digest:
        raise FlashError(f"{target.description}: completion record did not persist")
    target.finish()
    m = verified.manifest
    return FlashReport(
        device_id=materials.device_id,
        target=target.description,
        plan_digest=plan.digest,
        files_total=len(plan.entries),
        files_written=len(todo),
        bytes_written=total,
        bundle=f"{m.name} {m.version} (sequence {m.sequence})",
        seconds=time.monotonic() - start,
    )
