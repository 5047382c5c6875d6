"""Serving robots that reach the broker but not the plane's gRPC port: files in blocks.

The plane answers :class:`protos.file_blocks.FileRequest` messages published on
``edgeflux/v1/devices/<id>/files/req`` with one :class:`~protos.file_blocks.FileBlock`
on that device's ``files/resp``: the same files ``DeviceService.FetchFile`` serves
(TUF metadata and targets, confined to the repository by the very same path check)
plus the device's signed desired state and, by policy.onnx digest, the parity
attestation ``AttestationService.GetAttestation`` serves (the same lookup, so the
same envelope, the same digest check and the same "none" for a bundle without one).
The broker's ACL lets only device ``<id>`` publish on its request topic, so the topic
names the requester; the plane still checks that the device is registered and not
revoked before answering.

Every request is answered or dropped, never allowed to stop the responder: a bad
payload, path, kind or range gets a refusal (``invalid``, ``not_found``,
``forbidden``) with a reason naming the field; a request on a malformed topic gets
no answer at all (there is no device to answer). Target blocks share the plane's
``max_concurrent_downloads`` slots with gRPC streams; requests beyond
`max_pending` (or `per_device_pending` from one robot) are answered ``busy`` and
the robot asks again. Responses expire after `expiry_s` where the broker speaks
MQTT 5, so a robot that reconnects late is not flooded with blocks it gave up on.

Started by ``edgeflux cloud up`` whenever the plane has a broker, as the
``edgeflux-files`` identity (its own certificate, issued on first use).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import grpc

from cloud.mqtt import CloudMqtt, CloudMqttSettings, Delivery
from cloud.server._rpc import RpcError
from cloud.server.attestation_lookup import AttestationLookup
from cloud.server.device_service import resolve_repo_path
from cloud.server.plane import Plane
from protos.file_blocks import (
    PREFIX,
    FileBlock,
    FileBlockError,
    FileRequest,
    parse_request_topic,
    response_topic,
)

__all__ = ["FileResponder", "answer"]

log = logging.getLogger(__name__)

REQUEST_FILTER = f"{PREFIX}/+/files/req"


def _salvage_id(payload: bytes) -> str:
    """The request id of a refused payload where one can be read (for the robot to match)."""
    try:
        doc = json.loads(payload[:2048].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    rid = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(rid, str) and len(rid) <= 32 and rid.isalnum():
        return rid
    return ""


def _read_block(path: Path, offset: int, length: int, shown: str) -> FileBlock:
    """`length` bytes of `path` at `offset` (one open file: a concurrent replace cannot
    mix two versions into one block)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115  (closed below)
    except IsADirectoryError:
        return FileBlock("", "not_found", reason=f"{shown!r} is not a file")
    except (FileNotFoundError, NotADirectoryError):
        return FileBlock("", "not_found", reason=f"no such file {shown!r}")
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return FileBlock("", "not_found", reason=f"{shown!r} is not a file")
        if offset > st.st_size:
            return FileBlock(
                "",
                "invalid",
                reason=f"offset {offset} is past the end of {shown!r} ({st.st_size} bytes)",
            )
        fh.seek(offset)
        data = fh.read(min(length, st.st_size - offset))
    return FileBlock("", "ok", offset=offset, total=st.st_size, data=data)


def _slice(req: FileRequest, data: bytes, length: int, what: str) -> FileBlock:
    """The block of an in-memory file (`what` names it in a refusal)."""
    if req.offset > len(data):
        return FileBlock(req.id, "invalid", reason=f"offset {req.offset} is past {what}")
    block = data[req.offset : req.offset + length]
    return FileBlock(req.id, "ok", offset=req.offset, total=len(data), data=block)


async def _attestation(attestations: AttestationLookup, req: FileRequest, length: int) -> FileBlock:
    """A block of the envelope GetAttestation would return; its NOT_FOUND is not_found."""
    try:
        rec = await attestations.get(req.path)
    except RpcError as exc:
        status = "not_found" if exc.code == grpc.StatusCode.NOT_FOUND else "invalid"
        return FileBlock(req.id, status, reason=str(exc))
    return _slice(req, rec.envelope, length, "the attestation")


async def answer(
    plane: Plane,
    device_id: str,
    payload: bytes,
    block_bytes: int,
    attestations: AttestationLookup | None = None,
) -> FileBlock:
    """The response to one request from `device_id` (the topic's, so the broker's word).

    `attestations`: the lookup attestation requests are served from (one per responder,
    for its cache); a fresh one when not given."""
    try:
        req = FileRequest.decode(payload)
    except FileBlockError as exc:
        return FileBlock(_salvage_id(payload), "invalid", reason=str(exc))
    device = await plane.db_read(plane.store.get_device, device_id)
    if device is None:
        return FileBlock(req.id, "forbidden", reason=f"device {device_id!r} is not registered")
    if device.revoked:
        return FileBlock(req.id, "forbidden", reason=f"device {device_id!r} is revoked")
    length = min(req.length, block_bytes)
    if req.kind == "desired":
        return _slice(req, plane.desired_state(device), length, "the desired state")
    if req.kind == "attestation":
        return await _attestation(attestations or AttestationLookup(plane), req, length)
    base = plane.tuf.metadata_dir if req.kind == "metadata" else plane.tuf.targets_dir
    try:
        path = resolve_repo_path(base, req.path)
    except RpcError as exc:
        return FileBlock(req.id, "invalid", reason=str(exc))
    if req.kind == "target":
        async with plane.download_slots():
            block = await asyncio.to_thread(_read_block, path, req.offset, length, req.path)
    else:
        block = await asyncio.to_thread(_read_block, path, req.offset, length, req.path)
    return FileBlock(req.id, block.status, block.offset, block.total, block.data, block.reason)


class FileResponder:
    """Subscribes to every device's request topic and answers on the plane's event loop."""

    def __init__(
        self,
        plane: Plane,
        settings: CloudMqttSettings,
        *,
        block_bytes: int | None = None,
        max_pending: int | None = None,
        per_device_pending: int = 8,
        expiry_s: int = 30,
    ) -> None:
        self.plane = plane
        self.settings = settings
        self.block_bytes = block_bytes or plane.config.fetch_chunk_bytes
        self.max_pending = max_pending or 4 * plane.config.max_concurrent_downloads
        self.per_device_pending = per_device_pending
        self.expiry_s = expiry_s
        self.counters: collections.Counter[str] = collections.Counter()
        self.attestations = AttestationLookup(plane)
        self._pending: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._mqtt: CloudMqtt | None = None
        self.on_answer: Callable[[str, FileBlock], None] | None = None
        """Called with (device id, response) after each answer (metrics, tests)."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        mqtt = CloudMqtt(self.settings, on_message=self._on_message, clean_session=True, mqtt5=True)
        mqtt.subscribe(REQUEST_FILTER)
        await asyncio.to_thread(mqtt.start)
        self._mqtt = mqtt
        log.info(
            "MQTT file responder on %s:%d (MQTT %s)",
            self.settings.host,
            self.settings.port,
            "5" if mqtt.mqtt5 else "3.1.1",
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):  # cancelled or failed: stopping anyway
                await task
        if self._mqtt is not None:
            await asyncio.to_thread(self._mqtt.stop)
            self._mqtt = None

    # ---- network thread

    def _on_message(self, delivery: Delivery) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._admit, delivery.topic, delivery.payload)

    # ---- event loop

    def _admit(self, topic_name: str, payload: bytes) -> None:
        device_id = parse_request_topic(topic_name)
        if device_id is None:
            self.counters["dropped_bad_topic"] += 1
            log.warning("file request on a malformed topic %r dropped", topic_name[:120])
            return
        total = sum(self._pending.values())
        if total >= self.max_pending or self._pending[device_id] >= self.per_device_pending:
            self._reply(
                device_id,
                FileBlock(
                    _salvage_id(payload),
                    "busy",
                    reason=f"{total} requests in progress; ask again shortly",
                ),
            )
            return
        self._pending[device_id] += 1
        task = asyncio.get_running_loop().create_task(self._serve(device_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, device_id: str, payload: bytes) -> None:
        try:
            try:
                block = await answer(
                    self.plane, device_id, payload, self.block_bytes, self.attestations
                )
            except Exception as exc:  # a store outage or a bug: refuse, keep serving
                log.exception("file request from %s failed", device_id)
                block = FileBlock(_salvage_id(payload), "error", reason=type(exc).__name__)
            self._reply(device_id, block)
        finally:
            self._pending[device_id] -= 1
            if self._pending[device_id] <= 0:
                del self._pending[device_id]

    def _reply(self, device_id: str, block: FileBlock) -> None:
        self.counters[block.status] += 1
        if block.status != "ok":
            log.info("file request from %s refused (%s): %s", device_id, block.status, block.reason)
        mqtt = self._mqtt
        if mqtt is not None:
            mqtt.publish(
                response_topic(device_id), block.encode(), wait_s=None, expiry_s=self.expiry_s
            )
        if self.on_answer is not None:
            self.on_answer(device_id, block)
