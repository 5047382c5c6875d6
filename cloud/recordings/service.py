"""`RecordingService` on the control plane: robots upload flight-recorder segments.

Files go to ``<home>/recordings/<device_id>/<name>``: written as ``<name>.part`` while
they arrive (an interrupted upload resumes where ``SegmentOffset`` says it stopped),
renamed into place once the whole file's sha256 matches what the robot declared, and
only then indexed in the store (`cloud.store.recordings`). A device uploads and asks
for its own segments only; names must be what the flight recorder writes.

Mounted by `cloud.plane_services.PLANE_SERVICES` through `register`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.server._rpc import RpcError, unary
from cloud.server.auth import Authenticator, Identity
from cloud.server.plane import Plane
from cloud.store.recordings import RecordingStore, SegmentRecord
from protos import recordings_pb2, recordings_pb2_grpc

__all__ = ["NAME", "RecordingServicer", "recordings_dir", "register"]

NAME = re.compile(r"^seg-(\d{20})(\.keep)?\.mcap$")
MAX_SEGMENT_BYTES = 1 << 30


def recordings_dir(home_root: Path) -> Path:
    return home_root / "recordings"


def _check_name(name: str) -> re.Match[str]:
    m = NAME.match(name)
    if m is None:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"segment name {name[:80]!r} is not seg-<20 digits>[.keep].mcap",
        )
    return m


def _own(ident: Identity, ref: recordings_pb2.SegmentRef) -> str:
    if ref.device_id and ref.device_id != ident.id:
        raise RpcError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"device {ident.id!r} cannot upload segments of {ref.device_id!r}",
        )
    return ident.id


class RecordingServicer(recordings_pb2_grpc.RecordingServiceServicer):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.index = RecordingStore(plane.store.engine)
        self.root = recordings_dir(plane.home.root)

    async def _device(self, context: Any) -> Identity:
        ident = await self.plane.auth.identify(context)
        return Authenticator.require_device(ident, service="RecordingService")

    def _receipt(
        self, device: str, name: str, received: int, rec: SegmentRecord | None
    ) -> recordings_pb2.UploadReceipt:
        out = recordings_pb2.UploadReceipt(
            segment=recordings_pb2.SegmentRef(device_id=device, name=name),
            received=received,
            complete=rec is not None,
            sha256=rec.sha256 if rec is not None else "",
        )
        if rec is not None:
            ts = Timestamp()
            ts.FromDatetime(rec.uploaded_at)
            out.uploaded_at.CopyFrom(ts)
        return out

    @unary
    async def SegmentOffset(
        self, request: recordings_pb2.SegmentRef, context: Any
    ) -> recordings_pb2.UploadReceipt:
        ident = await self._device(context)
        device = _own(ident, request)
        _check_name(request.name)
        rec = await self.plane.db(self.index.get, device, request.name)
        if rec is not None:
            return self._receipt(device, request.name, rec.size, rec)
        part = self.root / device / (request.name + ".part")
        size = part.stat().st_size if part.exists() else 0
        return self._receipt(device, request.name, size, None)

    @unary
    async def UploadSegment(
        self, request_iterator: AsyncIterator[recordings_pb2.SegmentChunk], context: Any
    ) -> recordings_pb2.UploadReceipt:
        ident = await self._device(context)
        device = name = ""
        part: Path | None = None
        fh: Any = None
        try:
            async for chunk in request_iterator:
                if not name:
                    device = _own(ident, chunk.segment)
                    name = chunk.segment.name
                    _check_name(name)
                    if chunk.total_size > MAX_SEGMENT_BYTES:
                        raise RpcError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"segment {name} of {chunk.total_size} bytes is over the "
                            f"{MAX_SEGMENT_BYTES}-byte limit",
                        )
                    done = await self.plane.db(self.index.get, device, name)
                    if done is not None:  # already stored: nothing to write
                        return self._receipt(device, name, done.size, done)
                    (self.root / device).mkdir(parents=True, exist_ok=True)
                    part = self.root / device / (name + ".part")
                    fh = await asyncio.to_thread(open, part, "ab")
                elif chunk.segment.name != name or (chunk.segment.device_id or device) != device:
                    raise RpcError(
                        grpc.StatusCode.INVALID_ARGUMENT, "every chunk must name the same segment"
                    )
                at = fh.tell()
                if chunk.offset != at:
                    raise RpcError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"chunk at offset {chunk.offset}, the plane holds {at} bytes of {name}; "
                        "ask SegmentOffset and resume from there",
                    )
                if at + len(chunk.data) > chunk.total_size:
                    raise RpcError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"chunk runs past the declared size of {name} ({chunk.total_size})",
                    )
                await asyncio.to_thread(fh.write, chunk.data)
                if chunk.last:
                    await asyncio.to_thread(fh.flush)
                    return await self._finish(device, name, part, fh, chunk)  # type: ignore[arg-type]
            if not name:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "empty upload")
            await asyncio.to_thread(fh.flush)
            return self._receipt(device, name, fh.tell(), None)  # resumable later
        finally:
            if fh is not None:
                fh.close()

    async def _finish(
        self, device: str, name: str, part: Path, fh: Any, last: recordings_pb2.SegmentChunk
    ) -> recordings_pb2.UploadReceipt:
        size = fh.tell()
        if size != last.total_size:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"last chunk at {size} bytes, but {name} was declared {last.total_size}",
            )
        digest = await asyncio.to_thread(_sha256, part)
        if digest != last.sha256:
            part.unlink(missing_ok=True)  # start again from zero
            raise RpcError(
                grpc.StatusCode.DATA_LOSS,
                f"{name}: sha256 of what arrived is {digest[:12]}…, the robot sent "
                f"{last.sha256[:12]}…; upload it again",
            )
        os.replace(part, part.with_name(name))
        m = _check_name(name)
        rec = SegmentRecord(
            device, name, int(m[1]), m[2] is not None, size, digest, dt.datetime.now(dt.UTC)
        )
        rec = await self.plane.db(self.index.put, rec)
        return self._receipt(device, name, size, rec)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def register(server: grpc.aio.Server, plane: Plane) -> list[str]:
    servicer = RecordingServicer(plane)
    recordings_pb2_grpc.add_RecordingServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return [recordings_pb2.DESCRIPTOR.services_by_name["RecordingService"].full_name]
