"""Update downloads over MQTT, for a robot that reaches the broker but not the plane's gRPC.

:class:`MqttBlockClient` asks the plane for one block of a file at a time
(:mod:`protos.file_blocks`: a request on ``edgeflux/v1/devices/<id>/files/req``,
the answer on ``.../files/resp``), waits for the answer with its id, and retries a
block that did not come back in time (or that the plane was too busy to serve) with
a fresh request id. :class:`MqttFetcher` turns blocks into the offset-addressed
ranges :mod:`fleet.tuf_client` reads, so TUF metadata and targets fetched over MQTT
go through exactly the verification of the gRPC path: the TUF client checks the
metadata chain, the chunk store checks every chunk against the signed target, and
nothing a block says beyond "these bytes are at this offset" is believed.

:func:`attestation_fetcher` is the MQTT twin of :func:`fleet.attestation.grpc_fetcher`:
it hands the envelope's bytes to the same verifier, which believes nothing the
transport says.

Usage (what ``fleet._effects.RobotEffects`` does when gRPC is unreachable)::

    blocks = MqttBlockClient(agent.transport, "robot-7", block_bytes=256 * 1024)
    tuf = TufClient(state_dir, bootstrap_root, MqttFetcher(blocks))
    envelope = blocks.fetch_whole("desired", "")
    decision = check_activation(policy, ..., fetch=attestation_fetcher(blocks), ...)
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from tuf.api import exceptions as tuf_exc

from fleet.attestation import MAX_ENVELOPE_BYTES as MAX_ATTESTATION_BYTES
from fleet.bandwidth import Pacer
from fleet.tuf_client import TransportFetcher
from protos import device_pb2
from protos.file_blocks import FileBlock, FileBlockError, FileRequest, request_topic, response_topic

__all__ = [
    "HEADER_ROOM",
    "MqttBlockClient",
    "MqttFetchError",
    "MqttFetcher",
    "attestation_fetcher",
]

log = logging.getLogger(__name__)

HEADER_ROOM = 4096
"""Bytes a response needs beyond its block (the header), for the incoming size cap."""


class MqttFetchError(RuntimeError):
    """A block could not be fetched over MQTT; `status` is the plane's word (or "timeout")."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Transport(Protocol):
    def publish(self, topic_name: str, payload: bytes) -> bool: ...

    def subscribe(
        self,
        topic_filter: str,
        handler: Callable[[str, bytes], None],
        *,
        max_payload_bytes: int | None = None,
    ) -> None: ...


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.block: FileBlock | None = None


class MqttBlockClient:
    """Request/response of file blocks over the agent's MQTT connection."""

    def __init__(
        self,
        transport: _Transport,
        device_id: str,
        *,
        block_bytes: int = 256 * 1024,
        timeout_s: float = 10.0,
        retries: int = 5,
        window: int = 4,
    ) -> None:
        self.transport = transport
        self.device_id = device_id
        self.block_bytes = block_bytes
        self.timeout_s = timeout_s
        self.retries = retries
        self.window = max(1, window)
        """Requests in flight at once while streaming a file."""
        self._req = request_topic(device_id)
        self._resp = response_topic(device_id)
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiter] = {}
        self.counters: dict[str, int] = {
            "requests": 0,
            "blocks": 0,
            "bytes": 0,
            "retries": 0,
            "bad_responses": 0,
            "stale_responses": 0,
        }
        # Blocks are larger than any other message the robot takes: this topic only.
        transport.subscribe(
            self._resp, self._on_response, max_payload_bytes=block_bytes + HEADER_ROOM
        )

    def _on_response(self, topic_name: str, payload: bytes) -> None:
        try:
            block = FileBlock.decode(payload)
        except FileBlockError as exc:
            self.counters["bad_responses"] += 1
            log.warning("ignored a malformed file block on %s: %s", topic_name, exc)
            return
        with self._lock:
            waiter = self._waiting.pop(block.id, None)
        if waiter is None:  # answered after its time-out, or not ours at all
            self.counters["stale_responses"] += 1
            return
        waiter.block = block
        waiter.done.set()

    def request(self, kind: str, path: str, offset: int, length: int) -> FileBlock:
        """One block (status "ok"), retried on time-outs and "busy"; any other refusal
        raises :class:`MqttFetchError` with the plane's reason."""
        req_len = max(1, min(length or self.block_bytes, self.block_bytes))
        last = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters["retries"] += 1
                time.sleep(min(2.0, 0.1 * 2**attempt))
            req = FileRequest(secrets.token_hex(8), kind, path, offset, req_len)
            waiter = _Waiter()
            with self._lock:
                self._waiting[req.id] = waiter
            try:
                self.counters["requests"] += 1
                if not self.transport.publish(self._req, req.encode()):
                    last = "the MQTT connection is down"
                    waiter.done.wait(min(1.0, self.timeout_s))
                    continue
                if not waiter.done.wait(self.timeout_s):
                    last = f"no answer within {self.timeout_s:g} s"
                    log.info("%s %s at %d: %s; asking again", kind, path, offset, last)
                    continue
            finally:
                with self._lock:
                    self._waiting.pop(req.id, None)
            block = waiter.block
            assert block is not None
            if block.status == "busy":
                last = f"the plane is busy: {block.reason}"
                continue
            if block.status != "ok":
                raise MqttFetchError(block.status, f"{kind} {path!r}: {block.reason}")
            if block.offset != offset:
                raise MqttFetchError(
                    "invalid", f"{kind} {path!r}: block at offset {block.offset}, asked {offset}"
                )
            self.counters["blocks"] += 1
            self.counters["bytes"] += len(block.data)
            return block
        raise MqttFetchError(
            "timeout", f"{kind} {path!r} at offset {offset}: {last} ({self.retries + 1} tries)"
        )

    def _send(self, kind: str, path: str, offset: int, length: int) -> tuple[str, _Waiter] | None:
        """Publish one request; (its id, its waiter), None if the connection is down."""
        req = FileRequest(secrets.token_hex(8), kind, path, offset, length)
        waiter = _Waiter()
        with self._lock:
            self._waiting[req.id] = waiter
        self.counters["requests"] += 1
        if self.transport.publish(self._req, req.encode()):
            return req.id, waiter
        self._forget(req.id)
        return None

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._waiting.pop(request_id, None)

    def blocks(self, kind: str, path: str, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """The bytes of `path` from `offset`: `length` of them (0: to the end), in blocks,
        with up to `window` requests in flight; a block that does not come back in time
        (or finds the plane busy) is asked for again on its own, with retries."""
        first = self.request(kind, path, offset, length or self.block_bytes)
        total = first.total
        end = min(offset + length, total) if length else total
        if not first.data:
            if offset < end:
                raise MqttFetchError("invalid", f"{path!r}: empty block at {offset} of {total}")
            return
        data = first.data[: end - offset]
        at = offset + len(data)
        yield data
        started = time.monotonic()
        next_log = started + 5.0
        window: collections.deque[tuple[int, int, tuple[str, _Waiter] | None]] = collections.deque()
        ahead = at  # the next offset to ask for
        try:
            while at < end:
                while len(window) < self.window and ahead < end:
                    want = min(self.block_bytes, end - ahead)
                    window.append((ahead, want, self._send(kind, path, ahead, want)))
                    ahead += want
                off, want, sent = window.popleft()
                block: FileBlock | None = None
                if sent is not None:
                    if sent[1].done.wait(self.timeout_s):
                        block = sent[1].block
                    self._forget(sent[0])
                if block is not None and block.status not in ("ok", "busy"):
                    raise MqttFetchError(block.status, f"{kind} {path!r}: {block.reason}")
                if block is None or block.status == "busy" or block.offset != off:
                    block = self.request(kind, path, off, want)  # alone, with retries
                else:
                    self.counters["blocks"] += 1
                    self.counters["bytes"] += len(block.data)
                if block.total != total:
                    raise MqttFetchError("invalid", f"{path!r} changed size while it was fetched")
                if not block.data:
                    raise MqttFetchError("invalid", f"{path!r}: empty block at {off} of {total}")
                data = block.data[: end - at]
                at += len(data)
                yield data
                if len(data) < want and at < end:  # the plane serves smaller blocks: re-plan
                    for _, _, queued in window:
                        if queued is not None:
                            self._forget(queued[0])
                    window.clear()
                    ahead = at
                now = time.monotonic()
                if kind == "target" and now >= next_log:
                    next_log = now + 5.0
                    rate = (at - offset) / max(now - started, 1e-6)
                    log.info(
                        "MQTT download %s: %d of %d bytes (%.0f KiB/s)", path, at, end, rate / 1024
                    )
        finally:
            for _, _, queued in window:
                if queued is not None:
                    self._forget(queued[0])

    def fetch_whole(self, kind: str, path: str, max_bytes: int = 1 << 20) -> bytes:
        """A small file in full (the desired state), refused when over `max_bytes`."""
        out = bytearray()
        for data in self.blocks(kind, path):
            out += data
            if len(out) > max_bytes:
                raise MqttFetchError("invalid", f"{kind} {path!r} is over {max_bytes} bytes")
        return bytes(out)


class MqttFetcher(TransportFetcher):
    """TUF metadata and targets in blocks over MQTT (see the module docstring)."""

    def __init__(self, client: MqttBlockClient, pacer: Pacer | None = None) -> None:
        self.client = client
        self.pacer = pacer
        """Paces target downloads (bandwidth cap, low priority); metadata is never paced."""

    def stream(self, kind: int, path: str, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        target = kind == device_pb2.FILE_KIND_TARGET
        name = "target" if target else "metadata"
        try:
            for data in self.client.blocks(name, path, offset, length):
                if self.pacer is not None and target:
                    self.pacer.take(len(data))
                yield data
        except MqttFetchError as exc:
            if exc.status == "not_found":
                raise tuf_exc.DownloadHTTPError(f"{path} not found", 404) from exc
            if exc.status == "forbidden":
                raise tuf_exc.DownloadHTTPError(f"{path} forbidden", 403) from exc
            raise tuf_exc.DownloadError(f"over MQTT: {exc}") from exc


def attestation_fetcher(client: MqttBlockClient) -> Callable[[str], bytes | None]:
    """A `fetch` for :func:`fleet.attestation.check_activation` over MQTT.

    The plane's ``not_found`` means "no attestation" (None), as gRPC NOT_FOUND does; any
    other refusal or a time-out raises and refuses activation as ``fetch_failed``.
    """

    def fetch(policy_sha256: str) -> bytes | None:
        try:
            return client.fetch_whole("attestation", policy_sha256, MAX_ATTESTATION_BYTES)
        except MqttFetchError as exc:
            if exc.status == "not_found":
                return None
            raise

    return fetch
