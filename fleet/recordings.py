"""Upload the flight recorder's finished segments to the control plane.

`SegmentUploader.run_once` sends the finished segments under the robot's recordings
directory that the plane does not hold yet, kept segments (around interventions and
faults) first, oldest first. Each upload asks the plane how much of the segment it
already holds (`SegmentOffset`) and streams the rest (`UploadSegment`, client
streaming), so an interrupted upload resumes instead of starting again; the last chunk
carries the file's sha256, which the plane checks before it stores and indexes it.
Uploads are paced to `bytes_per_s` and run only while `allowed()` says so (the agent:
when the telemetry spool is empty, so recordings never delay telemetry).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from protos import recordings_pb2, recordings_pb2_grpc

__all__ = ["SegmentUploader"]

log = logging.getLogger(__name__)


class SegmentUploader:
    def __init__(
        self,
        channel: grpc.Channel,
        directory: Path,
        *,
        chunk_bytes: int = 256 * 1024,
        bytes_per_s: float | None = None,
        timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_bytes <= 0 or (bytes_per_s is not None and bytes_per_s <= 0):
            raise ValueError("chunk_bytes and bytes_per_s must be > 0")
        self.stub = recordings_pb2_grpc.RecordingServiceStub(channel)  # type: ignore[no-untyped-call]
        self.dir = directory
        self.chunk_bytes = chunk_bytes
        self.bytes_per_s = bytes_per_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self.uploaded: set[str] = set()
        self.sent_bytes = 0

    def pending(self) -> list[Path]:
        """Finished segments not known to be on the plane: kept ones first, then by age."""
        segs = [p for p in self.dir.glob("seg-*.mcap") if p.name not in self.uploaded]
        return sorted(segs, key=lambda p: (not p.name.endswith(".keep.mcap"), p.name))

    def upload(self, path: Path) -> recordings_pb2.UploadReceipt:
        """Send what the plane lacks of `path`; raises grpc.RpcError or OSError."""
        ref = recordings_pb2.SegmentRef(name=path.name)
        have: recordings_pb2.UploadReceipt = self.stub.SegmentOffset(ref, timeout=self.timeout_s)
        if have.complete:
            self.uploaded.add(path.name)
            return have
        data = path.read_bytes()  # a finished segment never changes
        digest = hashlib.sha256(data).hexdigest()
        receipt: recordings_pb2.UploadReceipt = self.stub.UploadSegment(
            self._chunks(ref, data, int(have.received), digest), timeout=self.timeout_s
        )
        if receipt.complete:
            self.uploaded.add(path.name)
        return receipt

    def _chunks(
        self, ref: recordings_pb2.SegmentRef, data: bytes, offset: int, digest: str
    ) -> Iterator[recordings_pb2.SegmentChunk]:
        start = self._clock()
        sent = 0
        if offset > len(data):
            offset = 0  # the plane holds more than the file: not ours, start again
        while True:
            piece = data[offset : offset + self.chunk_bytes]
            last = offset + len(piece) >= len(data)
            yield recordings_pb2.SegmentChunk(
                segment=ref,
                offset=offset,
                data=piece,
                total_size=len(data),
                last=last,
                sha256=digest if last else "",
            )
            offset += len(piece)
            sent += len(piece)
            self.sent_bytes += len(piece)
            if last:
                return
            if self.bytes_per_s is not None:  # pace to the bandwidth limit
                ahead = sent / self.bytes_per_s - (self._clock() - start)
                if ahead > 0:
                    self._sleep(ahead)

    def run_once(self, allowed: Callable[[], bool] = lambda: True) -> int:
        """Upload pending segments while `allowed()`; returns how many completed."""
        done = 0
        for path in self.pending():
            if not allowed():
                break
            try:
                receipt = self.upload(path)
            except FileNotFoundError:
                continue  # the recorder's quota deleted it meanwhile
            except grpc.RpcError as exc:
                code: Any = exc.code() if hasattr(exc, "code") else None
                log.warning("recording %s not uploaded (%s): %s", path.name, code, exc)
                break  # the plane or the link is unwell: try again next round
            if receipt.complete:
                done += 1
        return done
