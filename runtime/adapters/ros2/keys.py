"""How rmw_zenoh names and frames ROS 2 topics on Zenoh (no ROS installation needed).

A topic's key expression is ``<domain_id>/<topic without the leading slash>/<DDS type
name>/<type hash>``, e.g. ``0/joint_states/sensor_msgs::msg::dds_::JointState_/RIHS01_…``.
The payload is the CDR-serialized message (with its 4-byte encapsulation header);
each sample carries an attachment, serialized as Zenoh's extension serializer writes
it: the strings ``sequence_number``, ``source_timestamp``, ``source_gid``, each
followed by its value (int64, int64, 16 bytes).
"""

from __future__ import annotations

import re
import struct

__all__ = [
    "GID_SIZE",
    "dds_type_name",
    "decode_attachment",
    "encode_attachment",
    "topic_key",
]

GID_SIZE = 16
_TOPIC = re.compile(r"^/?[A-Za-z_~{][A-Za-z0-9_/{}~]*$")
_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)/(msg)/([A-Za-z][A-Za-z0-9_]*)$")


def dds_type_name(ros_type: str) -> str:
    """``sensor_msgs/msg/JointState`` → ``sensor_msgs::msg::dds_::JointState_``."""
    m = _TYPE.match(ros_type)
    if m is None:
        raise ValueError(f"{ros_type!r} is not a ROS 2 message type name like pkg/msg/Name")
    pkg, kind, name = m.groups()
    return f"{pkg}::{kind}::dds_::{name}_"


def topic_key(domain_id: int, topic: str, ros_type: str, type_hash: str) -> str:
    """The key expression rmw_zenoh publishes and subscribes `topic` on."""
    if not 0 <= domain_id <= 232:
        raise ValueError(f"ROS domain id must be 0..232, got {domain_id}")
    if not _TOPIC.match(topic) or "//" in topic or topic.rstrip("/") != topic:
        raise ValueError(f"{topic!r} is not a ROS 2 topic name like /joint_states")
    if not type_hash.startswith("RIHS01_"):
        raise ValueError(f"type hash {type_hash!r} is not a RIHS01 hash")
    return f"{domain_id}/{topic.lstrip('/')}/{dds_type_name(ros_type)}/{type_hash}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return _varint(len(data)) + data


def encode_attachment(sequence_number: int, source_timestamp_ns: int, gid: bytes) -> bytes:
    if len(gid) != GID_SIZE:
        raise ValueError(f"source gid must be {GID_SIZE} bytes, got {len(gid)}")
    return b"".join(
        (
            _string("sequence_number"),
            struct.pack("<q", sequence_number),
            _string("source_timestamp"),
            struct.pack("<q", source_timestamp_ns),
            _string("source_gid"),
            _varint(GID_SIZE),
            gid,
        )
    )


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("attachment ends inside a length")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_varint(data, pos)
    if pos + n > len(data):
        raise ValueError("attachment ends inside a field")
    return data[pos : pos + n], pos + n


def decode_attachment(data: bytes) -> tuple[int, int, bytes]:
    """(sequence_number, source_timestamp_ns, gid); ValueError says what is malformed."""
    pos = 0
    values: list[int] = []
    for key in ("sequence_number", "source_timestamp"):
        name, pos = _read_bytes(data, pos)
        if name != key.encode():
            raise ValueError(f"attachment: expected key {key!r}, got {name[:40]!r}")
        if pos + 8 > len(data):
            raise ValueError(f"attachment ends inside {key}")
        values.append(struct.unpack_from("<q", data, pos)[0])
        pos += 8
    name, pos = _read_bytes(data, pos)
    if name != b"source_gid":
        raise ValueError(f"attachment: expected key 'source_gid', got {name[:40]!r}")
    gid, pos = _read_bytes(data, pos)
    if len(gid) != GID_SIZE:
        raise ValueError(f"attachment: source gid of {len(gid)} bytes, expected {GID_SIZE}")
    return values[0], values[1], gid
