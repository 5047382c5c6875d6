"""`DeviceService`: what a robot's agent calls, as itself (mTLS device cert).

- `GetDesiredState`: the DSSE-signed desired-state document (see `Plane.desired_state`).
- `FetchFile`: TUF metadata and targets streamed in chunks, resumable by offset.
  Paths are relative to ``tuf/metadata`` (kind METADATA) or ``tuf/targets`` (kind
  TARGET), e.g. ``2.root.json`` or ``bundles/<sha256>.pendulum-1.0.0.efb``.
- `ReportInventory`: what the robot runs and has.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import grpc

from cloud.server._rpc import RpcError, stream, unary
from cloud.server.auth import Authenticator, Identity, peer_certificate
from cloud.server.plane import Plane
from protos import common_pb2, device_pb2, device_pb2_grpc
from runtime.desired_state import BundleRef, DesiredStateError

__all__ = ["DeviceServicer", "register"]

MAX_PATH_CHARS = 512


def _bundle_dict(ref: common_pb2.BundleRef, what: str) -> dict[str, Any] | None:
    """A reported bundle as stored (all five reference fields), refused when malformed."""
    try:
        parsed = BundleRef.from_pb(ref)
    except DesiredStateError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"inventory {what}: {exc}") from exc
    return parsed.model_dump() if parsed is not None else None


def resolve_repo_path(base: Path, rel: str) -> Path:
    """Map a client path onto a file under `base`, refusing anything that could escape it."""
    if not rel or len(rel) > MAX_PATH_CHARS or "\x00" in rel or "\\" in rel:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid path {rel[:80]!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"path {rel[:80]!r} must be relative, without '.' or '..' components",
        )
    candidate = base.joinpath(*pure.parts)
    real_base = os.path.realpath(base)
    real = os.path.realpath(candidate)
    if os.path.commonpath([real_base, real]) != real_base:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"path {rel[:80]!r} leaves the repository")
    return Path(real)


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    def _download_slots(self) -> asyncio.Semaphore:
        """Bounds the target streams served at once; metadata is never queued behind them."""
        return self.plane.download_slots()

    @unary
    async def GetDesiredState(
        self, request: device_pb2.GetDesiredStateRequest, context: Any
    ) -> device_pb2.DesiredState:
        plane = self.plane
        device = await plane.db_read(plane.auth.device_record, peer_certificate(context))
        plane.touch_later(device.id)
        envelope = plane.desired_state(device)
        return device_pb2.DesiredState(envelope=common_pb2.SignedEnvelope(dsse_json=envelope))

    @stream
    async def FetchFile(
        self, request: device_pb2.FetchFileRequest, context: Any
    ) -> AsyncIterator[device_pb2.FileChunk]:
        await self.plane.auth.identify(context)  # devices and operators may read the repo
        if request.kind == device_pb2.FILE_KIND_METADATA:
            base = self.plane.tuf.metadata_dir
        elif request.kind == device_pb2.FILE_KIND_TARGET:
            base = self.plane.tuf.targets_dir
        else:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "kind must be METADATA or TARGET")
        path = resolve_repo_path(base, request.path)
        cfg = self.plane.config
        chunk = min(request.max_chunk_bytes or cfg.fetch_chunk_bytes, cfg.max_fetch_chunk_bytes)
        if request.kind == device_pb2.FILE_KIND_TARGET:
            async with self._download_slots():
                async for piece in self._stream_file(path, request, chunk):
                    yield piece
            return
        async for piece in self._stream_file(path, request, chunk):
            yield piece

    async def _stream_file(
        self, path: Path, request: device_pb2.FetchFileRequest, chunk: int
    ) -> AsyncIterator[device_pb2.FileChunk]:
        try:
            # One open file for the whole stream: a concurrent atomic replace (timestamp
            # re-signing) cannot mix two versions into one download.
            fh = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise RpcError(
                grpc.StatusCode.NOT_FOUND, f"no such {_kind(request.kind)} {request.path!r}"
            ) from None
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"{request.path!r} is not a file")
            size = st.st_size
            offset = request.offset
            if offset > size:
                raise RpcError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"offset {offset} is past the end of {request.path!r} ({size} bytes)",
                )
            if offset == size:
                yield device_pb2.FileChunk(offset=offset, data=b"", total_size=size, last=True)
                return
            fh.seek(offset)
            end = min(size, offset + request.length) if request.length else size
            while offset < end:
                data = await asyncio.to_thread(fh.read, min(chunk, end - offset))
                if not data:
                    raise RpcError(grpc.StatusCode.ABORTED, f"{request.path!r} shrank while read")
                last = offset + len(data) >= end
                yield device_pb2.FileChunk(offset=offset, data=data, total_size=size, last=last)
                offset += len(data)
        finally:
            fh.close()

    def _inventory_sync(self, pem: bytes | None, request: device_pb2.Inventory) -> None:
        ident: Identity = Authenticator.require_device(self.plane.auth.identify_pem(pem))
        if request.device_id and request.device_id != ident.id:
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"device {ident.id!r} cannot report inventory for {request.device_id!r}",
            )
        inventory: dict[str, Any] = {
            "runtime_version": request.runtime_version,
            "hardware_tags": list(request.hardware_tags),
            "execution_providers": list(request.execution_providers),
            "platform": request.platform,
            "anti_rollback": dict(request.anti_rollback),
        }
        active = _bundle_dict(request.active_bundle, "active_bundle")
        if active:
            inventory["active_bundle"] = active
        pending = _bundle_dict(request.pending_bundle, "pending_bundle")
        if pending:
            inventory["pending_bundle"] = pending
        self.plane.store.record_inventory(ident.id, inventory)

    @unary
    async def ReportInventory(
        self, request: device_pb2.Inventory, context: Any
    ) -> device_pb2.ReportInventoryResponse:
        await self.plane.db(self._inventory_sync, peer_certificate(context), request)
        return device_pb2.ReportInventoryResponse(accepted=True)


def _kind(kind: int) -> str:
    return "metadata file" if kind == device_pb2.FILE_KIND_METADATA else "target"


def register(server: grpc.aio.Server, plane: Plane) -> list[str]:
    device_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(plane), server)  # type: ignore[no-untyped-call]
    return [device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name]
