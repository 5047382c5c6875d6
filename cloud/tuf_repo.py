"""The control plane's TUF repository, built on python-tuf's Metadata API.

Layout under ``<home>/tuf/`` (what ``tuf.ngclient.Updater`` expects with
``consistent_snapshot`` on)::

    keys/<role>.key                  Ed25519 PKCS#8 PEM, 0600 (root, targets, snapshot, timestamp)
    metadata/<N>.root.json           every root version (clients walk the chain)
    metadata/root.json               a copy of the newest root (bootstrap for flashing)
    metadata/<N>.targets.json
    metadata/<N>.snapshot.json
    metadata/timestamp.json
    targets/<dir>/<sha256>.<name>    content-addressed target files

Every mutation runs under an exclusive file lock and re-reads the metadata from disk,
so the CLI (`cloud publish`) and a running server can both change the repository
without losing each other's writes. Files are written with runtime.atomicio, targets
before the metadata that names them, timestamp last.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    TOP_LEVEL_ROLE_NAMES,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from runtime.atomicio import atomic_write_bytes

__all__ = ["TufError", "TufRepository"]

_SAFE_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*$")


class TufError(Exception):
    """The TUF repository is missing, corrupt, or a change to it was refused."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class TufRepository:
    """A single-signer-per-role TUF repository on the local filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.metadata_dir = self.root / "metadata"
        self.targets_dir = self.root / "targets"
        self.keys_dir = self.root / "keys"
        if not (self.metadata_dir / "timestamp.json").is_file():
            raise TufError(f"{self.root} is not a TUF repository (metadata/timestamp.json missing)")

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        *,
        root_expiry_days: int = 365,
        expiry_days: int = 365,
        timestamp_expiry_s: int = 86_400,
    ) -> TufRepository:
        base = Path(root)
        (base / "keys").mkdir(parents=True, exist_ok=True)
        (base / "metadata").mkdir(exist_ok=True)
        (base / "targets").mkdir(exist_ok=True)
        signers: dict[str, CryptoSigner] = {}
        for role in TOP_LEVEL_ROLE_NAMES:
            signer = CryptoSigner.generate_ed25519()
            atomic_write_bytes(base / "keys" / f"{role}.key", signer.private_bytes, mode=0o600)
            signers[role] = signer
        now = _now()
        root_md = Metadata(Root(expires=now + dt.timedelta(days=root_expiry_days)))
        root_md.signed.consistent_snapshot = True
        for role, signer in signers.items():
            root_md.signed.add_key(signer.public_key, role)
        targets_md = Metadata(Targets(expires=now + dt.timedelta(days=expiry_days)))
        snapshot_md = Metadata(Snapshot(expires=now + dt.timedelta(days=expiry_days)))
        timestamp_md = Metadata(Timestamp(expires=now + dt.timedelta(seconds=timestamp_expiry_s)))
        root_md.sign(signers[Root.type])
        meta = base / "metadata"
        atomic_write_bytes(meta / "1.root.json", root_md.to_bytes())
        atomic_write_bytes(meta / "root.json", root_md.to_bytes())
        targets_md.sign(signers[Targets.type])
        atomic_write_bytes(meta / "1.targets.json", targets_md.to_bytes())
        snapshot_md.signed.meta["targets.json"] = MetaFile(version=1)
        snapshot_md.sign(signers[Snapshot.type])
        atomic_write_bytes(meta / "1.snapshot.json", snapshot_md.to_bytes())
        timestamp_md.signed.snapshot_meta = MetaFile(version=1)
        timestamp_md.sign(signers[Timestamp.type])
        atomic_write_bytes(meta / "timestamp.json", timestamp_md.to_bytes())
        return cls(base)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock across processes for read-modify-write of the metadata."""
        with (self.root / ".lock").open("a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _signer(self, role: str) -> CryptoSigner:
        path = self.keys_dir / f"{role}.key"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise TufError(f"TUF {role} key {path} is missing") from exc
        return CryptoSigner(key)

    def _load(self, name: str) -> Metadata[Any]:
        path = self.metadata_dir / name
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as exc:
            raise TufError(f"TUF metadata {path} is missing") from exc
        except Exception as exc:  # python-tuf raises several types for bad files
            raise TufError(f"TUF metadata {path} cannot be parsed: {exc}") from exc

    def _timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json")

    def _snapshot(self) -> Metadata[Snapshot]:
        ts = self._timestamp()
        return self._load(f"{ts.signed.snapshot_meta.version}.snapshot.json")

    def _targets(self) -> Metadata[Targets]:
        snap = self._snapshot()
        return self._load(f"{snap.signed.meta['targets.json'].version}.targets.json")

    def root_json(self) -> bytes:
        """The newest root metadata (what a robot is flashed with as its bootstrap)."""
        return (self.metadata_dir / "root.json").read_bytes()

    def targets(self) -> dict[str, TargetFile]:
        return dict(self._targets().signed.targets)

    def timestamp_expires(self) -> dt.datetime:
        return self._timestamp().signed.expires

    def target_file_path(self, target_name: str, sha256: str) -> Path:
        """Where the content-addressed copy of a target lives (consistent snapshot naming)."""
        p = PurePosixPath(target_name)
        return self.targets_dir / p.parent / f"{sha256}.{p.name}"

    # ------------------------------------------------------------------ mutations
    def _write_chain(
        self, targets_md: Metadata[Targets], expiry_days: int, timestamp_expiry_s: int
    ) -> None:
        now = _now()
        snap = self._snapshot()
        ts = self._timestamp()
        targets_md.signed.version += 1
        targets_md.signed.expires = now + dt.timedelta(days=expiry_days)
        targets_md.signatures.clear()
        targets_md.sign(self._signer(Targets.type))
        atomic_write_bytes(
            self.metadata_dir / f"{targets_md.signed.version}.targets.json", targets_md.to_bytes()
        )
        snap.signed.version += 1
        snap.signed.expires = now + dt.timedelta(days=expiry_days)
        snap.signed.meta["targets.json"] = MetaFile(version=targets_md.signed.version)
        snap.signatures.clear()
        snap.sign(self._signer(Snapshot.type))
        atomic_write_bytes(
            self.metadata_dir / f"{snap.signed.version}.snapshot.json", snap.to_bytes()
        )
        ts.signed.version += 1
        ts.signed.expires = now + dt.timedelta(seconds=timestamp_expiry_s)
        ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
        ts.signatures.clear()
        ts.sign(self._signer(Timestamp.type))
        atomic_write_bytes(self.metadata_dir / "timestamp.json", ts.to_bytes())

    def add_target(
        self,
        target_name: str,
        data_path: Path,
        custom: Mapping[str, Any],
        *,
        expiry_days: int = 365,
        timestamp_expiry_s: int = 86_400,
        hold_lock: bool = True,
    ) -> TargetFile:
        """Store `data_path` content-addressed and sign it into targets/snapshot/timestamp.

        Refuses to replace an existing target of the same name with different bytes:
        published bundles are immutable. `hold_lock=False` when the caller already
        holds :meth:`lock` (flock is per open file: taking it twice would deadlock).
        """
        if not _SAFE_TARGET.match(target_name) or ".." in target_name.split("/"):
            raise TufError(f"target name {target_name!r} is not a safe relative path")
        digest = hashlib.sha256()
        length = 0
        with data_path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                length += len(block)
        sha = digest.hexdigest()
        target = TargetFile(
            length, {"sha256": sha}, target_name, unrecognized_fields={"custom": dict(custom)}
        )
        with self.lock() if hold_lock else contextlib.nullcontext():
            targets_md = self._targets()
            existing = targets_md.signed.targets.get(target_name)
            if existing is not None and existing.hashes.get("sha256") != sha:
                raise TufError(
                    f"target {target_name} is already published with different content "
                    f"(sha256 {existing.hashes.get('sha256')}); published targets are immutable"
                )
            dest = self.target_file_path(target_name, sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                with data_path.open("rb") as src, contextlib.ExitStack() as stack:
                    from runtime.atomicio import atomic_writer

                    out = stack.enter_context(atomic_writer(dest))
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
            targets_md.signed.targets[target_name] = target
            self._write_chain(targets_md, expiry_days, timestamp_expiry_s)
        return target

    def remove_target(
        self, target_name: str, *, expiry_days: int = 365, timestamp_expiry_s: int = 86_400
    ) -> bool:
        """Drop a target from the signed metadata (the file stays); True if it was there."""
        with self.lock():
            targets_md = self._targets()
            if targets_md.signed.targets.pop(target_name, None) is None:
                return False
            self._write_chain(targets_md, expiry_days, timestamp_expiry_s)
        return True

    def _root(self) -> tuple[int, Metadata[Root]]:
        versions = [
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob("*.root.json")
            if p.name.split(".", 1)[0].isdigit()
        ]
        if not versions:
            raise TufError(f"no <N>.root.json in {self.metadata_dir}")
        newest = max(versions)
        return newest, self._load(f"{newest}.root.json")

    def rotate_key(
        self,
        role: str,
        *,
        root_expiry_days: int = 365,
        expiry_days: int = 365,
        timestamp_expiry_s: int = 86_400,
    ) -> str:
        """Replace `role`'s signing key with a new one; return the new key id.

        Writes root version N+1 (signed by the old root key and, when the root key
        itself rotates, the new one too, so clients can walk the chain from any older
        root) and, for targets/snapshot/timestamp, re-signs that role's metadata and
        everything above it. The old private key is kept as ``<role>.key.<old keyid>``.
        """
        if role not in TOP_LEVEL_ROLE_NAMES:
            raise TufError(f"role must be one of {sorted(TOP_LEVEL_ROLE_NAMES)}, not {role!r}")
        with self.lock():
            version, root_md = self._root()
            old_root_signer = self._signer(Root.type)
            new_signer = CryptoSigner.generate_ed25519()
            for keyid in list(root_md.signed.roles[role].keyids):
                root_md.signed.revoke_key(keyid, role)
            root_md.signed.add_key(new_signer.public_key, role)
            root_md.signed.version = version + 1
            root_md.signed.expires = _now() + dt.timedelta(days=root_expiry_days)
            root_md.signatures.clear()
            root_md.sign(old_root_signer, append=True)
            if role == Root.type:
                root_md.sign(new_signer, append=True)
            key_path = self.keys_dir / f"{role}.key"
            old_keyid = self._signer(role).public_key.keyid
            # The new key goes in place before the metadata that names it.
            atomic_write_bytes(
                self.keys_dir / f"{role}.key.{old_keyid[:16]}", key_path.read_bytes(), mode=0o600
            )
            atomic_write_bytes(key_path, new_signer.private_bytes, mode=0o600)
            atomic_write_bytes(self.metadata_dir / f"{version + 1}.root.json", root_md.to_bytes())
            atomic_write_bytes(self.metadata_dir / "root.json", root_md.to_bytes())
            if role in (Targets.type, Snapshot.type, Timestamp.type):
                # Re-sign from targets up: bumping versions keeps clients' rollback
                # checks happy and the new key's signatures are what they now expect.
                self._write_chain(self._targets(), expiry_days, timestamp_expiry_s)
            return str(new_signer.public_key.keyid)

    def refresh_timestamp(
        self, timestamp_expiry_s: int = 86_400, *, only_if_older_than: float | None = None
    ) -> tuple[dt.datetime, bool]:
        """Re-sign the timestamp with a new expiry (the plane does this on a schedule).

        With `only_if_older_than` (seconds), the decision is taken under the lock on the
        timestamp as it is then: it is re-signed only if it was signed at least that long
        ago (its age is `timestamp_expiry_s` minus the time it has left), has less than
        half its lifetime left, or its lifetime is longer than `timestamp_expiry_s`. So
        replicas on one home that decide at the same time re-sign it once. Returns the
        expiry and whether it was re-signed.
        """
        with self.lock():
            ts = self._timestamp()
            if only_if_older_than is not None:
                left = (ts.signed.expires - _now()).total_seconds()
                age = timestamp_expiry_s - left
                if 0 <= age < only_if_older_than and left >= timestamp_expiry_s / 2:
                    return ts.signed.expires, False
            ts.signed.version += 1
            ts.signed.expires = _now() + dt.timedelta(seconds=timestamp_expiry_s)
            ts.signatures.clear()
            ts.sign(self._signer(Timestamp.type))
            atomic_write_bytes(self.metadata_dir / "timestamp.json", ts.to_bytes())
            return ts.signed.expires, True
