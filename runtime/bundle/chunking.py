"""Content-defined chunking: cut a byte stream where its content says, not every N bytes.

Two versions of a bundle that share most of their bytes (a policy whose last layers
were retrained) then share most of their chunks, even where an edit moved later
bytes, so a robot that holds the old chunks fetches only the new ones.

The cut rule (a gear hash with normalised chunk sizes, after FastCDC):

* ``gear(i)`` is the 32-bit gear hash ending at byte ``i``:
  ``h = ((h << 1) + GEAR[byte]) mod 2**32`` rolled over the whole stream, i.e.
  ``sum(GEAR[data[i - j]] << j for j in 0..31) mod 2**32``: it depends on the last
  32 bytes only. ``GEAR`` is 256 words from sha256 of their index (so anyone can
  rebuild the table).
* A chunk starting at ``s`` ends after byte ``i`` (end ``e = i + 1``) for the first
  ``e`` in ``[s + min, s + avg)`` whose ``gear(i)`` has its top ``bits + 2`` bits zero;
  failing that, the first ``e`` in ``[s + avg, s + max)`` with the top ``bits - 2``
  bits zero; failing that at ``e = s + max``; the last chunk ends at the stream's end.
  ``bits = log2(avg)``.

The hash is computed with numpy over blocks (five shift-and-add passes of doubling
window width), so memory stays at a few blocks whatever the stream's length;
`cut_points_reference` is the byte-at-a-time definition the tests hold it to.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_PARAMS",
    "Chunk",
    "ChunkParams",
    "chunk_file",
    "chunk_stream",
    "cut_points",
    "cut_points_reference",
]

GEAR: npt.NDArray[np.uint32] = np.array(
    [
        int.from_bytes(hashlib.sha256(b"edgeflux-gear-%d" % i).digest()[:4], "little")
        for i in range(256)
    ],
    dtype=np.uint32,
)
_WINDOW = 32
_BLOCK = 1 << 20  # numpy's temporaries stay in cache


@dataclass(frozen=True)
class ChunkParams:
    min_size: int = 256 << 10
    avg_size: int = 1 << 20
    max_size: int = 4 << 20

    def __post_init__(self) -> None:
        if self.avg_size & (self.avg_size - 1) or self.avg_size < 64:
            raise ValueError(f"avg_size {self.avg_size} must be a power of two >= 64")
        if not _WINDOW <= self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                f"need {_WINDOW} <= min_size <= avg_size <= max_size, got "
                f"{self.min_size}, {self.avg_size}, {self.max_size}"
            )

    @property
    def bits(self) -> int:
        return self.avg_size.bit_length() - 1


DEFAULT_PARAMS = ChunkParams()


@dataclass(frozen=True)
class Chunk:
    offset: int
    length: int
    sha256: str


def _gear_block(data: npt.NDArray[np.uint8], tail: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """gear(i) for every byte of `data`, `tail` being the (up to 31) bytes before it."""
    h: npt.NDArray[np.uint32] = GEAR[np.concatenate([tail, data]) if len(tail) else data]
    width = 1
    while width < _WINDOW:
        # The right side is evaluated from the old `h` before the in-place add;
        # uint32 arithmetic wraps, exactly mod 2**32.
        h[width:] += h[:-width] << np.uint32(width)
        width *= 2
    return h[len(tail) :]


def _candidates(h: npt.NDArray[np.uint32], base: int, bits: int) -> tuple[list[int], list[int]]:
    """Chunk ends (absolute) whose hash passes the strict and the loose mask."""
    strict = np.nonzero((h >> np.uint32(32 - (bits + 2))) == 0)[0]
    loose = np.nonzero((h >> np.uint32(32 - (bits - 2))) == 0)[0]
    return [base + int(i) + 1 for i in strict], [base + int(i) + 1 for i in loose]


class _Cutter:
    """Turns the candidate ends seen so far into decided cuts, in order."""

    def __init__(self, p: ChunkParams) -> None:
        self.p = p
        self.start = 0
        self.strict: list[int] = []
        self.loose: list[int] = []

    def add(self, strict: list[int], loose: list[int]) -> None:
        self.strict += strict
        self.loose += loose

    def cuts(self, seen: int, final: bool) -> Iterator[int]:
        """Cuts decidable with the first `seen` bytes known (all of them if `final`)."""
        p = self.p
        while self.start < seen:
            s = self.start
            self.strict = [e for e in self.strict if e > s]
            self.loose = [e for e in self.loose if e > s]
            end: int | None = next(
                (e for e in self.strict if s + p.min_size <= e < s + p.avg_size), None
            )
            if end is None and (seen >= s + p.avg_size or final):
                end = next((e for e in self.loose if s + p.avg_size <= e < s + p.max_size), None)
                if end is None and (seen >= s + p.max_size or final):
                    end = min(s + p.max_size, seen)
            if end is None or end > seen:
                return
            self.start = end
            yield end


def _blocks(fh: BinaryIO, block: int) -> Iterator[bytes]:
    while True:
        data = fh.read(block)
        if not data:
            return
        yield data


def chunk_stream(
    fh: BinaryIO, params: ChunkParams = DEFAULT_PARAMS, block: int = _BLOCK
) -> Iterator[Chunk]:
    """The chunks of `fh` (read from its current position to its end) with their sha256."""
    return _chunks(_blocks(fh, block), params)


def chunk_file(
    path: str | os.PathLike[str], params: ChunkParams = DEFAULT_PARAMS
) -> list[list[str | int]]:
    """The signed-metadata form of a file's chunks: ``[[sha256 hex, length], ...]``."""
    with open(path, "rb") as fh:
        return [[c.sha256, c.length] for c in chunk_stream(fh, params)]


def _chunks(blocks: Iterable[bytes], p: ChunkParams) -> Iterator[Chunk]:
    cutter = _Cutter(p)
    tail = np.zeros(0, np.uint8)
    seen = 0
    pending = bytearray()  # bytes of the chunk(s) not yet cut
    pending_at = 0
    for data in blocks:
        arr = np.frombuffer(data, np.uint8)
        cutter.add(*_candidates(_gear_block(arr, tail), seen, p.bits))
        tail = (np.concatenate([tail, arr]) if len(arr) < _WINDOW else arr)[-(_WINDOW - 1) :]
        seen += len(data)
        pending += data
        for end in cutter.cuts(seen, final=False):
            n = end - pending_at
            yield Chunk(pending_at, n, hashlib.sha256(pending[:n]).hexdigest())
            del pending[:n]
            pending_at = end
    for end in cutter.cuts(seen, final=True):
        n = end - pending_at
        yield Chunk(pending_at, n, hashlib.sha256(pending[:n]).hexdigest())
        del pending[:n]
        pending_at = end


def cut_points(data: bytes, params: ChunkParams = DEFAULT_PARAMS) -> list[int]:
    """Chunk ends of `data` (in memory; for files use `chunk_stream`)."""
    return [c.offset + c.length for c in _chunks([data], params)]


def cut_points_reference(data: bytes, params: ChunkParams = DEFAULT_PARAMS) -> list[int]:
    """The cut rule byte by byte, as the module docstring states it (slow; for tests)."""
    gear = [int(g) for g in GEAR]
    hashes = []
    h = 0
    for b in data:
        h = ((h << 1) + gear[b]) & 0xFFFFFFFF
        hashes.append(h)
    strict_mask = 32 - (params.bits + 2)
    loose_mask = 32 - (params.bits - 2)
    cuts: list[int] = []
    s = 0
    while s < len(data):
        end = None
        for e in range(s + params.min_size, min(s + params.avg_size, len(data) + 1)):
            if hashes[e - 1] >> strict_mask == 0:
                end = e
                break
        if end is None:
            for e in range(s + params.avg_size, min(s + params.max_size, len(data) + 1)):
                if hashes[e - 1] >> loose_mask == 0:
                    end = e
                    break
        if end is None:
            end = min(s + params.max_size, len(data))
        cuts.append(end)
        s = end
    return cuts
