"""Chunked target downloads: fetch only the chunks the robot does not hold yet.

A published target lists its content-defined chunks (sha256 and length, in order)
in its signed TUF custom fields. The robot's chunks are the targets it assembled
before: each has an index (``<downloads>/chunks/<target sha256>.json``) of where
its chunks lie, so a chunk of the new target that an old one holds is copied
from disk (and re-hashed) instead of fetched.

A download writes each chunk in place into ``<target sha256>.chunked`` only after
its bytes hashed to the signed digest, and records it in a journal
(``.chunked.done``), both fsynced every few megabytes: a download killed at any
point resumes with every journalled chunk (re-hashed when read back, so a chunk
the journal names but the disk lost is fetched again) and never trusts a partial
one. A chunk whose bytes do not hash to its signed digest is never written; it is
requested again (`REFETCHES` times) before the download fails, so one block garbled
by a transport costs one chunk, not the update. The whole file is hashed as it is
built and must equal the target's signed sha256 before it is renamed into place.
Only the indexes of the last `KEEP_TARGETS` assembled targets are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KEEP_TARGETS",
    "REFETCHES",
    "ChunkError",
    "ChunkRef",
    "ChunkStore",
    "FetchStats",
    "RangeFetch",
    "parse_chunk_list",
]

log = logging.getLogger(__name__)

KEEP_TARGETS = 2
REFETCHES = 2
"""How often a chunk that arrived with wrong bytes is requested again."""
# Fetched bytes between fsyncs: what a power loss may cost again. A journalled chunk
# is hashed again when a resume reads it back, so the journal may run ahead of the
# data safely; a process kill loses nothing (the page cache survives it).
_SYNC_BYTES = 16 << 20
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
    """Bytes taken from disk: journalled before an interruption, or held by old targets."""
    refused_chunks: int = 0
    """Chunks that arrived with bytes not matching their signed digest (fetched again)."""


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


def _pread(path: Path, offset: int, length: int) -> bytes | None:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    except OSError:
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_fetch(
    refs: Sequence[ChunkRef], done: set[int], held: dict[str, tuple[Path, int]]
) -> list[bool]:
    """Which chunks no journal entry, old target or earlier copy in this target holds."""
    seen: set[str] = set()
    need = []
    for i, r in enumerate(refs):
        need.append(i not in done and r.sha256 not in held and r.sha256 not in seen)
        seen.add(r.sha256)
    return need


class _Run:
    """One range request for a run of consecutive chunks to fetch (one stream, not one
    per chunk), handing out each chunk's bytes as they arrive."""

    def __init__(
        self, fetch: RangeFetch, refs: Sequence[ChunkRef], need: Sequence[bool], i: int
    ) -> None:
        last = i
        while last + 1 < len(refs) and need[last + 1]:
            last += 1
        self.offset = refs[i].offset
        self.end = refs[last].offset + refs[last].length
        self._stream = fetch(self.offset, self.end - self.offset)
        self._buf = bytearray()
        self._at = self.offset  # absolute offset of _buf[0]

    def take(self, ref: ChunkRef, where: str) -> bytes:
        """The verified bytes of `ref` (which must lie in this run, after what was taken)."""
        if ref.offset > self._at:
            self._skip(ref.offset - self._at)
        while len(self._buf) < ref.length:
            block = next(self._stream, None)
            if block is None:
                break
            self._buf += block
        data = bytes(self._buf[: ref.length])
        del self._buf[: ref.length]
        self._at += len(data)
        if len(data) != ref.length or _sha(data) != ref.sha256:
            self.close()
            raise ChunkError(
                f"{where}: the {len(data)} bytes received for the chunk at offset {ref.offset} "
                f"do not match its signed sha256 {ref.sha256[:12]}… and length {ref.length}; "
                "the chunk was not stored"
            )
        return data

    def _skip(self, n: int) -> None:
        while len(self._buf) < n:
            block = next(self._stream, None)
            if block is None:
                break
            self._buf += block
        del self._buf[:n]
        self._at += n

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _fetch_verified(
    fetch: RangeFetch,
    refs: Sequence[ChunkRef],
    need: Sequence[bool],
    i: int,
    run: _Run | None,
    where: str,
    stats: FetchStats,
) -> tuple[bytes, _Run | None]:
    """Chunk `i`'s verified bytes, from `run` or a new range request; a chunk that
    arrives with wrong bytes is requested again, up to `REFETCHES` times."""
    ref = refs[i]
    for attempt in range(REFETCHES + 1):
        if run is None or run.end <= ref.offset:
            if run is not None:
                run.close()
            run = _Run(fetch, refs, need, i)
        try:
            return run.take(ref, where), run
        except ChunkError as exc:
            run = None  # take() closed it; its stream is past the refused chunk
            stats.refused_chunks += 1
            if attempt == REFETCHES:
                raise
            log.warning("%s; requesting it again (%d of %d)", exc, attempt + 1, REFETCHES)
    raise AssertionError("unreachable")


class ChunkStore:
    """Chunked downloads into `downloads`, reusing chunks of targets assembled there."""

    def __init__(self, downloads: Path) -> None:
        self.downloads = downloads
        self.index_dir = downloads / "chunks"

    def _held(self) -> dict[str, tuple[Path, int]]:
        """sha256 -> (file, offset) of every chunk of an indexed, still present target."""
        held: dict[str, tuple[Path, int]] = {}
        if not self.index_dir.is_dir():
            return held
        for idx in sorted(self.index_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                entry = json.loads(idx.read_text())
                file = self.downloads / str(entry["file"])
                if file.is_file():
                    for sha, offset in entry["chunks"]:
                        held.setdefault(str(sha), (file, int(offset)))
        return held

    def missing_bytes(self, refs: Sequence[ChunkRef], sha256: str) -> int:
        """How many bytes of `refs` neither an old target nor this download's journal holds."""
        held = self._held()
        done = self._journal(self._part(sha256), refs)
        return sum(r.length for i, r in enumerate(refs) if i not in done and r.sha256 not in held)

    def _part(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.chunked"

    @staticmethod
    def _journal(part: Path, refs: Sequence[ChunkRef]) -> set[int]:
        done: set[int] = set()
        try:
            lines = part.with_name(part.name + ".done").read_text().splitlines()
        except OSError:
            return done
        for line in lines:  # a torn last line (killed mid-write) is simply not counted
            index, _, sha = line.partition(" ")
            if index.isdigit() and int(index) < len(refs) and refs[int(index)].sha256 == sha:
                done.add(int(index))
        return done

    def download(
        self, refs: Sequence[ChunkRef], fetch: RangeFetch, final: Path, sha256: str, where: str
    ) -> FetchStats:
        """Build `final` from its chunks (resuming), verify it, rename it into place."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        part = self._part(sha256)
        journal_path = part.with_name(part.name + ".done")
        done = self._journal(part, refs)
        held = self._held()
        stats = FetchStats(chunks=len(refs))
        whole = hashlib.sha256()
        written: dict[str, int] = {}  # chunks of this target already in place
        need = _to_fetch(refs, done, held)
        run: _Run | None = None
        unsynced = 0
        fd = os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            with open(journal_path, "a", encoding="ascii") as journal:
                for i, ref in enumerate(refs):
                    data = os.pread(fd, ref.length, ref.offset) if i in done else None
                    if data is not None and _sha(data) == ref.sha256:
                        stats.reused_bytes += ref.length
                    else:
                        data = None if need[i] else self._from_disk(ref, held, written, fd)
                        fetched = data is None
                        if data is None:
                            data, run = _fetch_verified(fetch, refs, need, i, run, where, stats)
                            stats.fetched_chunks += 1
                            stats.fetched_bytes += ref.length
                        else:
                            stats.reused_bytes += ref.length
                        os.pwrite(fd, data, ref.offset)
                        journal.write(f"{i} {ref.sha256}\n")
                        journal.flush()
                        unsynced += ref.length if fetched else 0
                        if unsynced >= _SYNC_BYTES:
                            os.fdatasync(fd)
                            os.fsync(journal.fileno())
                            unsynced = 0
                    written.setdefault(ref.sha256, ref.offset)
                    whole.update(data)
            if run is not None:
                run.close()
            os.ftruncate(fd, sum(r.length for r in refs))
            os.fsync(fd)
        finally:
            os.close(fd)
        if whole.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            journal_path.unlink(missing_ok=True)
            raise ChunkError(
                f"{where}: the assembled chunks hash to {whole.hexdigest()[:12]}…, the signed "
                f"sha256 is {sha256[:12]}…; the partial file was discarded"
            )
        os.replace(part, final)
        journal_path.unlink(missing_ok=True)
        self._remember(final, refs, sha256)
        return stats

    @staticmethod
    def _from_disk(
        ref: ChunkRef, held: dict[str, tuple[Path, int]], written: dict[str, int], fd: int
    ) -> bytes | None:
        if ref.sha256 in written:
            data: bytes | None = os.pread(fd, ref.length, written[ref.sha256])
        elif ref.sha256 in held:
            file, offset = held[ref.sha256]
            data = _pread(file, offset, ref.length)
        else:
            return None
        return data if data is not None and _sha(data) == ref.sha256 else None

    def _remember(self, final: Path, refs: Sequence[ChunkRef], sha256: str) -> None:
        """Index this target's chunks; forget all but the last `KEEP_TARGETS` targets."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        entry = {"file": final.name, "chunks": [[r.sha256, r.offset] for r in refs]}
        (self.index_dir / f"{sha256}.json").write_text(json.dumps(entry))
        indexes = sorted(self.index_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in indexes[:-KEEP_TARGETS]:
            old.unlink(missing_ok=True)
