"""The robot's chunk store: fetch only the chunks of a target it does not hold yet.

A published target lists its content-defined chunks (sha256 and length, in order)
in its signed TUF custom fields. The robot keeps every chunk it fetched under
``<root>/<sha256>``, each written to a temporary file, fsynced and renamed only
after its bytes hashed to the signed digest, so a download killed at any point
resumes with the chunks already on disk and never trusts a partial one. The
target is assembled from the store and verified against its signed length and
sha256 before it is renamed into place. Chunks no longer referenced by the last
`KEEP_TARGETS` assembled targets are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KEEP_TARGETS",
    "ChunkError",
    "ChunkRef",
    "ChunkStore",
    "FetchStats",
    "parse_chunk_list",
]

KEEP_TARGETS = 2
_MAX_CHUNKS = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")

RangeFetch = Callable[[int, int], Iterator[bytes]]
"""fetch(offset, length) -> the target's bytes from `offset` (at least `length` of them)."""


class ChunkError(RuntimeError):
    """A chunk list or a chunk's bytes are not what the signed metadata says."""


@dataclass(frozen=True)
class ChunkRef:
    offset: int
    length: int
    sha256: str


@dataclass
class FetchStats:
    chunks: int = 0
    fetched_chunks: int = 0
    fetched_bytes: int = 0
    reused_bytes: int = 0


def parse_chunk_list(raw: object, total_length: int, where: str) -> list[ChunkRef]:
    """The signed `chunks` custom field, [[sha256, length], ...], checked against the target."""
    if not isinstance(raw, list) or not raw or len(raw) > _MAX_CHUNKS:
        raise ChunkError(f"{where}: chunks must be a non-empty list of [sha256, length]")
    refs: list[ChunkRef] = []
    offset = 0
    for i, item in enumerate(raw):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not _HEX64.fullmatch(item[0])
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or item[1] <= 0
        ):
            raise ChunkError(f"{where}: chunk {i} is {item!r}, expected [sha256 hex, length > 0]")
        refs.append(ChunkRef(offset, item[1], item[0]))
        offset += item[1]
    if offset != total_length:
        raise ChunkError(
            f"{where}: the chunks add up to {offset} bytes, the signed length is {total_length}"
        )
    return refs


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkStore:
    """Verified chunks by sha256 under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._targets = root / "targets"

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, ref: ChunkRef) -> bool:
        try:
            return self.path(ref.sha256).stat().st_size == ref.length
        except FileNotFoundError:
            return False

    def put(self, ref: ChunkRef, data: bytes, where: str) -> None:
        """Store `data` as chunk `ref` if (and only if) it hashes to the signed digest."""
        if len(data) != ref.length or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ChunkError(
                f"{where}: the {len(data)} bytes received for the chunk at offset {ref.offset} "
                f"do not match its signed sha256 {ref.sha256[:12]}… and length {ref.length}; "
                "the chunk was not stored"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{ref.sha256}.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path(ref.sha256))
        _fsync_dir(self.root)

    def missing(self, refs: Sequence[ChunkRef]) -> list[ChunkRef]:
        seen: set[str] = set()
        out = []
        for r in refs:
            if r.sha256 not in seen and not self.has(r):
                out.append(r)
            seen.add(r.sha256)
        return out

    def fetch(self, refs: Sequence[ChunkRef], fetch: RangeFetch, where: str) -> FetchStats:
        """Fetch and store every chunk of `refs` the store lacks."""
        stats = FetchStats(chunks=len(refs))
        need = self.missing(refs)
        for ref in need:
            data = bytearray()
            stream = fetch(ref.offset, ref.length)
            try:
                for block in stream:
                    data += block
                    if len(data) >= ref.length:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            self.put(ref, bytes(data[: ref.length]), where)
            stats.fetched_chunks += 1
            stats.fetched_bytes += ref.length
        stats.reused_bytes = sum(r.length for r in refs) - sum(r.length for r in need)
        return stats

    def assemble(self, refs: Sequence[ChunkRef], out: Path, sha256: str, where: str) -> Path:
        """Write the target from its chunks to `out` (atomically) and check its sha256."""
        part = out.with_name(out.name + ".assemble")
        whole = hashlib.sha256()
        with part.open("wb") as fh:
            for ref in refs:
                data = self.path(ref.sha256).read_bytes()
                if hashlib.sha256(data).hexdigest() != ref.sha256:
                    self.path(ref.sha256).unlink(missing_ok=True)  # rotted on disk: refetch
                    part.unlink(missing_ok=True)
                    raise ChunkError(f"{where}: stored chunk {ref.sha256[:12]}… is damaged")
                whole.update(data)
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if whole.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise ChunkError(
                f"{where}: the assembled chunks hash to {whole.hexdigest()[:12]}…, the signed "
                f"sha256 is {sha256[:12]}…"
            )
        os.replace(part, out)
        self._remember(sha256, refs)
        return out

    def _remember(self, sha256: str, refs: Sequence[ChunkRef]) -> None:
        """Record this target's chunks and drop chunks no recent target references."""
        self._targets.mkdir(parents=True, exist_ok=True)
        (self._targets / f"{sha256}.json").write_text(json.dumps([r.sha256 for r in refs]))
        indexes = sorted(self._targets.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in indexes[:-KEEP_TARGETS]:
            old.unlink(missing_ok=True)
        keep: set[str] = set()
        for idx in indexes[-KEEP_TARGETS:]:
            with contextlib.suppress(OSError, ValueError):
                keep.update(json.loads(idx.read_text()))
        for p in self.root.iterdir():
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")  # a killed put
            if stale_tmp or (_HEX64.fullmatch(p.name) and p.name not in keep):
                p.unlink(missing_ok=True)
