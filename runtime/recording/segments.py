"""The recordings directory as a ring of MCAP segments under a disk quota.

::

    <dir>/seg-<start_ns>.mcap.part   the segment being written (never read by others)
    <dir>/seg-<start_ns>.mcap        a finished segment
    <dir>/seg-<start_ns>.keep.mcap   a finished segment around an intervention or fault

`start_ns` is the wall-clock time of the segment's first tick (zero-padded, so names
sort by time). Over the quota, the oldest plain segments go first; kept ones go only
when nothing else is left to delete, oldest first, so the quota always holds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Segment", "SegmentRing"]

log = logging.getLogger(__name__)

_PREFIX = "seg-"


@dataclass(frozen=True)
class Segment:
    path: Path
    start_ns: int
    kept: bool
    size: int


class SegmentRing:
    def __init__(self, directory: Path, quota_bytes: int) -> None:
        if quota_bytes <= 0:
            raise ValueError(f"quota_bytes must be > 0, got {quota_bytes}")
        self.dir = directory
        self.quota_bytes = quota_bytes
        self.deleted = 0
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f"{_PREFIX}*.mcap.part"):  # a crash mid-segment
            stale.unlink(missing_ok=True)

    def part_path(self, start_ns: int) -> Path:
        return self.dir / f"{_PREFIX}{start_ns:020d}.mcap.part"

    def finish(self, part: Path, keep: bool) -> Path:
        """Publish a written segment under its final name, then enforce the quota."""
        final = part.with_name(part.name.removesuffix(".mcap.part") + _suffix(keep))
        os.replace(part, final)
        self.enforce()
        return final

    def segments(self) -> list[Segment]:
        """Finished segments, oldest first."""
        out = []
        for p in self.dir.glob(f"{_PREFIX}*.mcap"):
            stem = p.name.removeprefix(_PREFIX).removesuffix(".mcap")
            kept = stem.endswith(".keep")
            digits = stem.removesuffix(".keep")
            if not digits.isdigit():
                continue
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            out.append(Segment(p, int(digits), kept, size))
        return sorted(out, key=lambda s: s.start_ns)

    def keep_since(self, since_ns: int) -> None:
        """Mark finished segments that may hold ticks at or after `since_ns` as kept."""
        segs = self.segments()
        for i, seg in enumerate(segs):
            ends = segs[i + 1].start_ns if i + 1 < len(segs) else None
            if seg.kept or (ends is not None and ends <= since_ns):
                continue
            os.replace(seg.path, seg.path.with_name(f"{_PREFIX}{seg.start_ns:020d}.keep.mcap"))

    def enforce(self, reserve: int = 0) -> None:
        """Delete segments until they fit the quota with `reserve` bytes to spare."""
        segs = self.segments()
        total = sum(s.size for s in segs) + reserve
        for seg in [s for s in segs if not s.kept] + [s for s in segs if s.kept]:
            if total <= self.quota_bytes:
                break
            seg.path.unlink(missing_ok=True)
            total -= seg.size
            self.deleted += 1
            log.debug("recording quota: deleted %s", seg.path.name)


def _suffix(keep: bool) -> str:
    return ".keep.mcap" if keep else ".mcap"
