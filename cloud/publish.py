"""Publishing: a signed bundle becomes an immutable, content-addressed TUF target.

Steps (`publish_bundle`), all-or-nothing:

1. Verify: a bundle directory is verified in place; an ``.efb`` is unpacked (capped,
   ``filter="data"``) into a private staging directory and verified there, against
   the home's trust store (``<home>/trust``, model-signing keys). Compatibility with
   a particular robot is the robot's check, not ours.
2. Under the repository lock (one publisher at a time, across processes): refuse a
   ``sequence`` that is not greater than the newest published one of that name
   (rollback), claim ``(name, version)`` and ``(name, sequence)`` in the store
   (unique constraints: of two concurrent publishes of one version exactly one wins),
   then add the target ``bundles/<name>-<version>.efb`` with custom fields name,
   version, sequence, policy_sha256, oms_root_digest and ``chunks`` (the archive's
   content-defined chunks, ``[[sha256, length], ...]``, so robots fetch only the
   chunks they lack) and re-sign targets, snapshot and timestamp. If the TUF step
   fails, the store row is removed again.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from cloud.home import CloudConfig, CloudHome
from cloud.store import BundleRecord, ConflictError, Store
from cloud.tuf_repo import TufError, TufRepository
from runtime.bundle import BundleError, pack_bundle, unpack_bundle, verify_bundle
from runtime.bundle.chunking import chunk_file
from runtime.desired_state import BundleRef, DesiredBundle, GatePolicy
from runtime.trust import TrustStore

__all__ = [
    "PublishError",
    "RollbackError",
    "bundle_ref",
    "chunk_reuse",
    "desired_bundle",
    "publish_bundle",
    "target_name_for",
]


class PublishError(Exception):
    """The bundle was refused; nothing was stored or signed."""


class RollbackError(PublishError):
    """The bundle's sequence does not advance past what is already published."""


def target_name_for(name: str, version: str) -> str:
    return f"bundles/{name}-{version}.efb"


def bundle_ref(rec: BundleRecord) -> BundleRef:
    """The reference of a published bundle, digests included."""
    return BundleRef(
        name=rec.name,
        version=rec.version,
        sequence=rec.sequence,
        policy_sha256=rec.policy_sha256,
        oms_root_digest=rec.oms_root_digest,
    )


def desired_bundle(rec: BundleRecord, gate: GatePolicy | None = None) -> DesiredBundle:
    """What a device's desired state names for a published bundle: the one builder."""
    return DesiredBundle(
        name=rec.name,
        version=rec.version,
        sequence=rec.sequence,
        target=rec.target_path,
        sha256=rec.efb_sha256,
        length=rec.size_bytes,
        gate=gate,
    )


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def publish_bundle(
    home: CloudHome,
    store: Store,
    source: str | Path,
    *,
    actor: str = "local",
    config: CloudConfig | None = None,
) -> BundleRecord:
    """Verify `source` (bundle directory or ``.efb``) and publish it; return its record.

    Raises PublishError (bad signature, tampered, rollback, ...) or ConflictError (the
    version is already published); in both cases the store and repository are unchanged.
    """
    cfg = config or home.config()
    src = Path(source)
    trust = TrustStore(home.trust)
    tuf = TufRepository(home.tuf)
    work = Path(tempfile.mkdtemp(prefix=".publish-", dir=home.state))
    try:
        try:
            if src.is_dir():
                verified = verify_bundle(src, trust)
                efb = pack_bundle(src, work / "bundle.efb")
            elif src.is_file():
                staging = unpack_bundle(src, work / "staging")
                verified = verify_bundle(staging, trust)
                efb = src
            else:
                raise PublishError(f"{src}: no such bundle directory or .efb file")
        except BundleError as exc:
            raise PublishError(f"refused to publish {src}: {exc}") from exc
        m = verified.manifest
        sha, size = _sha256(efb)
        chunks = chunk_file(efb)
        target = target_name_for(m.name, m.version)
        record = BundleRecord(
            name=m.name,
            version=m.version,
            sequence=m.sequence,
            efb_sha256=sha,
            size_bytes=size,
            target_path=target,
            policy_sha256=verified.policy_sha256,
            oms_root_digest=verified.root_digest,
            signer_key_id=verified.signer_key_id,
            published_by=actor,
        )
        with tuf.lock():
            same = store.get_bundle(m.name, m.version)
            if same is not None:
                raise ConflictError(
                    f"{m.name} {m.version} is already published (sequence {same.sequence}, "
                    f"sha256 {same.efb_sha256[:12]}…); publish a new version"
                )
            latest = store.latest_bundle(m.name)
            if latest is not None and m.sequence <= latest.sequence:
                raise RollbackError(
                    f"refused to publish {m.name} {m.version}: sequence {m.sequence} does not "
                    f"advance past the published {latest.version} (sequence {latest.sequence}); "
                    f"set `sequence` to {latest.sequence + 1} or more in edgeflux.json "
                    "and sign again"
                )
            store.add_bundle(record)
            try:
                tuf.add_target(
                    target,
                    efb,
                    {**bundle_ref(record).model_dump(), "chunks": chunks},
                    expiry_days=cfg.metadata_expiry_days,
                    timestamp_expiry_s=cfg.timestamp_expiry_s,
                    hold_lock=False,
                )
            except (TufError, OSError) as exc:
                store.delete_bundle(m.name, m.version)
                raise PublishError(f"could not add {target} to the TUF repository: {exc}") from exc
            except BaseException:
                store.delete_bundle(m.name, m.version)
                raise
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _chunk_meta(target: object) -> tuple[str, str, int, list[tuple[str, int]]] | None:
    """(name, version, sequence, chunks) from a target's custom fields, if well-formed."""
    custom = getattr(target, "unrecognized_fields", {}).get("custom")
    if not isinstance(custom, dict):
        return None
    name, version, seq, chunks = (custom.get(k) for k in ("name", "version", "sequence", "chunks"))
    if not isinstance(seq, int) or not isinstance(chunks, list):
        return None
    pairs = [
        (c[0], c[1])
        for c in chunks
        if isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], int)
    ]
    return str(name), str(version or ""), seq, pairs


def chunk_reuse(tuf: TufRepository, target: str) -> tuple[str, float, int] | None:
    """(previous version, fraction of `target`'s bytes in its chunks, bytes to fetch)
    against the newest earlier published version of the same bundle; None if none."""
    targets = tuf.targets()
    new = _chunk_meta(targets.get(target))
    if new is None:
        return None
    name, _, seq, chunks = new
    older = [
        m
        for m in map(_chunk_meta, targets.values())
        if m is not None and m[0] == name and m[2] < seq
    ]
    if not older:
        return None
    prev = max(older, key=lambda m: m[2])
    held = {sha for sha, _ in prev[3]}
    total = sum(n for _, n in chunks)
    fetch = sum(n for sha, n in chunks if sha not in held)
    return prev[1], (total - fetch) / total if total else 0.0, fetch
