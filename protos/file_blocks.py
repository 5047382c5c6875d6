"""Files in blocks over MQTT: the request and response a robot and the plane exchange.

A robot that reaches the broker but not the plane's gRPC port fetches what
``DeviceService`` and ``AttestationService`` would have served it — TUF metadata,
targets, its signed desired state and a bundle's parity attestation — one bounded
block at a time::

    edgeflux/v1/devices/<id>/files/req    robot → plane   a FileRequest (JSON)
    edgeflux/v1/devices/<id>/files/resp   plane → robot   a FileBlock

The broker's ACL lets a device publish only its own ``files/req`` and read only its
own ``files/resp``, so the device id in the topic is the requester's identity. A
request carries its own id (echoed in the response), because robots may speak MQTT
3.1.1, which has no correlation data.

A response is binary: a 4-byte big-endian header length, the header (JSON:
``id``, ``status``, ``reason``, ``offset``, ``total``), then the block's bytes.
Nothing in a block is trusted beyond "these are the bytes at `offset`": the robot
checks lengths and hashes against signed metadata, as it does for gRPC.

Both decoders refuse anything malformed with :class:`FileBlockError` naming the
field and what was expected; they never raise anything else on hostile input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "MAX_BLOCK_BYTES",
    "MAX_REQUEST_BYTES",
    "PREFIX",
    "STATUSES",
    "FileBlock",
    "FileBlockError",
    "FileRequest",
    "parse_request_topic",
    "request_topic",
    "response_topic",
]

PREFIX = "edgeflux/v1/devices"
KINDS = ("metadata", "target", "desired", "attestation")
"""metadata / target: a path under the TUF repository; desired: the device's signed
desired state (the path is empty); attestation: the DSSE envelope of the parity
attestation for a policy.onnx digest (the path: 64 lowercase hex digits)."""
STATUSES = ("ok", "invalid", "not_found", "forbidden", "busy", "error")
MAX_BLOCK_BYTES = 1 << 20
"""The largest block a request may ask for (the plane may serve less)."""
MAX_REQUEST_BYTES = 2048
MAX_PATH_CHARS = 512
MAX_FILE_BYTES = 1 << 50
_MAX_HEADER_BYTES = 4096
_ID = re.compile(r"^[0-9a-f]{8,32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FileBlockError(ValueError):
    """A request, a response or a topic is malformed; the message says which field."""


def request_topic(device_id: str) -> str:
    return f"{PREFIX}/{_device(device_id)}/files/req"


def response_topic(device_id: str) -> str:
    return f"{PREFIX}/{_device(device_id)}/files/resp"


def parse_request_topic(name: str) -> str | None:
    """The device id of a well-formed request topic, else None."""
    parts = name.split("/")
    if len(parts) != 6 or "/".join(parts[:3]) != PREFIX or parts[4:] != ["files", "req"]:
        return None
    return parts[3] if _DEVICE_ID.match(parts[3]) else None


def _device(device_id: str) -> str:
    if not _DEVICE_ID.match(device_id):
        raise FileBlockError(f"device id {device_id[:80]!r} is not valid in an MQTT topic")
    return device_id


def _int(doc: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise FileBlockError(
            f"{what} field {key!r} is {str(v)[:40]!r}, expected an integer {lo}..{hi}"
        )
    return v


def _str(doc: dict[str, Any], key: str, what: str, limit: int) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or len(v) > limit:
        raise FileBlockError(f"{what} field {key!r} must be a string of at most {limit} characters")
    return v


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FileBlockError(f"{what} is not UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise FileBlockError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


@dataclass(frozen=True)
class FileRequest:
    """Up to `length` bytes of `path` from `offset` (the plane caps the block)."""

    id: str
    kind: str
    path: str
    offset: int
    length: int

    def encode(self) -> bytes:
        self.validate()
        doc = {"id": self.id, "kind": self.kind, "path": self.path}
        doc |= {"offset": self.offset, "length": self.length}
        return json.dumps(doc, separators=(",", ":")).encode()

    def validate(self) -> None:
        if not _ID.match(self.id):
            raise FileBlockError(f"request id {self.id[:40]!r} must be 8-32 lowercase hex digits")
        if self.kind not in KINDS:
            raise FileBlockError(f"request kind {self.kind[:40]!r} is not one of {KINDS}")
        if len(self.path) > MAX_PATH_CHARS or (self.kind == "desired") != (self.path == ""):
            raise FileBlockError(
                f"request path {self.path[:80]!r}: a {self.kind} request needs "
                + ("no path" if self.kind == "desired" else f"a path of 1-{MAX_PATH_CHARS} chars")
            )
        if self.kind == "attestation" and not _SHA256.match(self.path):
            raise FileBlockError(
                f"request path {self.path[:80]!r}: an attestation request needs the sha256 "
                "of policy.onnx, 64 lowercase hex digits"
            )
        if not 0 <= self.offset <= MAX_FILE_BYTES:
            raise FileBlockError(f"request offset {self.offset} is outside 0..{MAX_FILE_BYTES}")
        if not 1 <= self.length <= MAX_BLOCK_BYTES:
            raise FileBlockError(f"request length {self.length} is outside 1..{MAX_BLOCK_BYTES}")

    @classmethod
    def decode(cls, raw: bytes) -> FileRequest:
        if len(raw) > MAX_REQUEST_BYTES:
            raise FileBlockError(f"request is {len(raw)} bytes, at most {MAX_REQUEST_BYTES}")
        doc = _object(raw, "request")
        extra = set(doc) - {"id", "kind", "path", "offset", "length"}
        if extra:
            raise FileBlockError(f"request has unknown fields {sorted(extra)[:5]}")
        req = cls(
            id=_str(doc, "id", "request", 32),
            kind=_str(doc, "kind", "request", 16),
            path=_str(doc, "path", "request", MAX_PATH_CHARS),
            offset=_int(doc, "offset", 0, MAX_FILE_BYTES, "request"),
            length=_int(doc, "length", 1, MAX_BLOCK_BYTES, "request"),
        )
        req.validate()
        return req


@dataclass(frozen=True)
class FileBlock:
    """The bytes of a file at `offset` (of `total`), or a refusal (`status`, `reason`)."""

    id: str
    status: str
    offset: int = 0
    total: int = 0
    data: bytes = b""
    reason: str = ""

    def encode(self) -> bytes:
        header = {"id": self.id, "status": self.status, "reason": self.reason[:500]}
        header |= {"offset": self.offset, "total": self.total}
        head = json.dumps(header, separators=(",", ":")).encode()
        return len(head).to_bytes(4, "big") + head + self.data

    @classmethod
    def decode(cls, raw: bytes) -> FileBlock:
        if len(raw) < 4:
            raise FileBlockError(f"response is {len(raw)} bytes, shorter than its header length")
        n = int.from_bytes(raw[:4], "big")
        if not 2 <= n <= _MAX_HEADER_BYTES or len(raw) < 4 + n:
            raise FileBlockError(f"response header length {n} does not fit the {len(raw)} bytes")
        doc = _object(raw[4 : 4 + n], "response header")
        status = _str(doc, "status", "response", 16)
        if status not in STATUSES:
            raise FileBlockError(f"response status {status!r} is not one of {STATUSES}")
        block = cls(
            id=_str(doc, "id", "response", 32),
            status=status,
            offset=_int(doc, "offset", 0, MAX_FILE_BYTES, "response"),
            total=_int(doc, "total", 0, MAX_FILE_BYTES, "response"),
            data=bytes(raw[4 + n :]),
            reason=_str(doc, "reason", "response", 500),
        )
        if len(block.data) > MAX_BLOCK_BYTES:
            raise FileBlockError(
                f"response block is {len(block.data)} bytes, at most {MAX_BLOCK_BYTES}"
            )
        if status == "ok" and block.offset + len(block.data) > block.total:
            raise FileBlockError(
                f"response block at {block.offset} of {len(block.data)} bytes runs past the "
                f"file's {block.total} bytes"
            )
        if status != "ok" and block.data:
            raise FileBlockError(f"a {status!r} response carries {len(block.data)} data bytes")
        return block
