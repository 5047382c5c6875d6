"""What a flash writes: a pure plan of files (path, content, mode), built from materials.

Paths are relative to the robot's filesystem root. Nothing here touches the target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from edgeflux.provision import _units
from edgeflux.provision.errors import FlashError
from runtime.layout import RobotLayout

__all__ = ["RECORD_PATH", "FileEntry", "FlashMaterials", "FlashPlan", "build_plan"]

# Written last: a target without it (or with another plan digest) is an unfinished flash.
RECORD_PATH = "etc/edgeflux/flash.json"
IDENTITY_CERT = "etc/edgeflux/identity/device.crt"
IDENTITY_KEY = "etc/edgeflux/identity/device.key"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of the plan: either inline `data` or a `source` file to copy."""

    path: str
    mode: int
    sha256: str
    size: int
    data: bytes | None = None
    source: Path | None = None

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.source is not None
        with self.source.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk


def _inline(path: str, data: bytes, mode: int = 0o644) -> FileEntry:
    return FileEntry(path, mode, hashlib.sha256(data).hexdigest(), len(data), data=data)


def _copied(path: str, source: Path, mode: int = 0o644) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with source.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return FileEntry(path, mode, h.hexdigest(), size, source=source)


@dataclass(frozen=True)
class FlashMaterials:
    """Everything a robot needs, gathered by the caller (from a control-plane home or files)."""

    device_id: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    trust_dir: Path
    """A `runtime.trust.TrustStore` directory (models/, attestation/)."""
    tuf_root: bytes
    """The TUF root the agent bootstraps from."""
    bundle_dir: Path
    """The first bundle; it must verify against `trust_dir`."""
    runtime_toml: str
    agent_toml: str
    director_pub: bytes | None = None
    wheelhouse: Path | None = None
    extras: str = "device"
    edgeflux_version: str = "0.1.0"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FlashPlan:
    device_id: str
    entries: tuple[FileEntry, ...]
    bundle_path: str
    """Where the first bundle lands (slot a), relative to the root."""
    trust_path: str

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def digest(self) -> str:
        """sha256 over the sorted (path, mode, sha256) list: identifies this exact flash."""
        h = hashlib.sha256()
        for e in sorted(self.entries, key=lambda e: e.path):
            h.update(f"{e.path}\0{e.mode:o}\0{e.sha256}\n".encode())
        return h.hexdigest()

    def record(self, flashed_at: datetime | None = None) -> FileEntry:
        """The completion record, written after every other file verified."""
        doc = {
            "schema": "edgeflux.flash/v1",
            "device_id": self.device_id,
            "plan_digest": self.digest,
            "flashed_at": (flashed_at or datetime.now(UTC)).isoformat(),
            "files": {e.path: e.sha256 for e in sorted(self.entries, key=lambda e: e.path)},
        }
        return _inline(RECORD_PATH, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _rel(layout: RobotLayout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def build_plan(m: FlashMaterials) -> FlashPlan:
    """Turn materials into the robot's file tree (trust store, A/B slots: docs/architecture.md)."""
    layout = RobotLayout(Path("/"))
    entries: list[FileEntry] = []

    def add(entry: FileEntry) -> None:
        p = PurePosixPath(entry.path)
        if p.is_absolute() or ".." in p.parts:
            raise FlashError(f"refusing plan path {entry.path!r}")
        entries.append(entry)

    add(_inline(IDENTITY_CERT, m.cert_pem))
    add(_inline(IDENTITY_KEY, m.key_pem, 0o600))
    trust = _rel(layout, layout.trust)
    add(_inline(f"{trust}/ca.crt", m.ca_pem))
    add(_inline(f"{trust}/tuf-root.json", m.tuf_root))
    if m.director_pub is not None:
        add(_inline(f"{trust}/director.pub", m.director_pub))
    for role in ("models", "attestation"):
        role_dir = m.trust_dir / role
        if role_dir.is_dir():
            for key in sorted(role_dir.glob("*.pem")):
                add(_copied(f"{trust}/{role}/{key.name}", key))
    add(_inline(_rel(layout, layout.runtime_config), m.runtime_toml.encode()))
    add(_inline(_rel(layout, layout.agent_config), m.agent_toml.encode()))

    bundle_path = _rel(layout, layout.slot("a"))
    bundle_files = sorted(p for p in m.bundle_dir.iterdir())
    for f in bundle_files:
        if f.is_symlink() or not f.is_file():
            raise FlashError(f"bundle {m.bundle_dir}: {f.name} is not a regular file")
        add(_copied(f"{bundle_path}/{f.name}", f))

    opt = _rel(layout, layout.opt)
    if m.wheelhouse is not None:
        for wheel in sorted(m.wheelhouse.glob("*.whl")):
            add(_copied(f"{opt}/wheelhouse/{wheel.name}", wheel))
        add(
            _inline(f"{opt}/install.sh", _units.install_script(m.extras, m.edgeflux_version), 0o755)
        )
        add(_inline("etc/systemd/system/edgeflux-install.service", _units.install_unit()))
    add(_inline("etc/systemd/system/edgeflux-runtime.service", _units.runtime_unit()))
    add(_inline("etc/systemd/system/edgeflux-agent.service", _units.agent_unit()))
    return FlashPlan(m.device_id, tuple(entries), bundle_path, trust)
