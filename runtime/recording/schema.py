"""The flight recorder's ROS 2 message types and their CDR encoding.

Two message types, as ROS 2 ``.msg`` definitions (MCAP schema encoding ``ros2msg``,
message encoding ``cdr``), so Foxglove and ROS 2 tools read the recordings without
any EdgeFlux code::

    edgeflux_msgs/msg/Tick    one per control tick (topic /edgeflux/tick)
    edgeflux_msgs/msg/Event   interventions, bundle switches, faults (/edgeflux/events)

The encoder writes little-endian CDR (XCDR1, encapsulation ``00 01 00 00``) by hand
for these two fixed layouts: an order of magnitude cheaper than a generic serializer,
and checked byte for byte against one in the tests.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "EVENT_DEFINITION",
    "EVENT_TYPE",
    "TICK_DEFINITION",
    "TICK_TYPE",
    "Tick",
    "decode_tick",
    "encode_event",
    "encode_tick",
    "schema_text",
]

TICK_TYPE = "edgeflux_msgs/msg/Tick"
EVENT_TYPE = "edgeflux_msgs/msg/Event"

TIME_DEFINITION = """\
int32 sec
uint32 nanosec
"""

TICK_DEFINITION = """\
# One control tick: what the robot reported, what was sent back, and why.
builtin_interfaces/Time stamp   # the tick's scheduled start (wall clock)
uint64 tick                     # ticks since the runtime started
float32[] observation           # as read from the robot (empty: none or not a float32 vector)
float32[] action                # as written to the robot (after the safety envelope)
float32 latency_ms              # read to write
bool late                       # the action was written after the tick's deadline
string[] interventions          # safety interventions during this tick (reasons)
string bundle                   # active bundle, name@version
string bundle_digest            # active bundle's signed root digest
"""

EVENT_DEFINITION = """\
# Something worth finding on a timeline: an intervention, a policy switch, a fault.
builtin_interfaces/Time stamp
uint64 tick
string kind     # intervention | switch | fault
string detail
"""

_SEPARATOR = "=" * 80


def schema_text(definition: str) -> bytes:
    """A ``ros2msg`` schema: the definition, then each dependency (as ros2 bags store it)."""
    return f"{definition}{_SEPARATOR}\nMSG: builtin_interfaces/Time\n{TIME_DEFINITION}".encode()


_HEADER = b"\x00\x01\x00\x00"  # CDR, little endian


def _stamp(ns: int) -> bytes:
    sec, nanosec = divmod(ns, 1_000_000_000)
    return struct.pack("<iI", sec, nanosec)


def _pad(buf: bytearray, align: int) -> None:
    buf.extend(b"\x00" * (-len(buf) % align))  # offsets count from after the header


def _string(buf: bytearray, text: str) -> None:
    data = text.encode()
    _pad(buf, 4)
    buf.extend(struct.pack("<I", len(data) + 1))
    buf.extend(data)
    buf.append(0)


def encode_tick(
    stamp_ns: int,
    tick: int,
    observation: bytes,
    action: bytes,
    latency_ms: float,
    late: bool,
    interventions: Sequence[str],
    bundle: str,
    bundle_digest: str,
) -> bytes:
    """CDR of one `edgeflux_msgs/msg/Tick`; observation/action are float32 bytes."""
    if not interventions:  # the common tick: every field lands 4-aligned, the tail is fixed
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        return b"".join(
            (
                _HEADER,
                struct.pack("<iIQI", sec, nanosec, tick, len(observation) // 4),
                observation,
                struct.pack("<I", len(action) // 4),
                action,
                struct.pack("<f?xxxI", latency_ms, late, 0),
                _tail(bundle, bundle_digest),
            )
        )
    buf = bytearray(_stamp(stamp_ns))  # 8 bytes: uint64 below is aligned
    buf.extend(struct.pack("<Q", tick))
    buf.extend(struct.pack("<I", len(observation) // 4))
    buf.extend(observation)
    buf.extend(struct.pack("<I", len(action) // 4))
    buf.extend(action)
    buf.extend(struct.pack("<f?", latency_ms, late))
    _pad(buf, 4)
    buf.extend(struct.pack("<I", len(interventions)))
    for reason in interventions:
        _string(buf, reason)
    _string(buf, bundle)
    _string(buf, bundle_digest)
    return _HEADER + bytes(buf)


@functools.lru_cache(maxsize=16)
def _tail(bundle: str, bundle_digest: str) -> bytes:
    """The two bundle strings, encoded from a 4-aligned offset."""
    buf = bytearray()
    _string(buf, bundle)
    _string(buf, bundle_digest)
    return bytes(buf)


def encode_event(stamp_ns: int, tick: int, kind: str, detail: str) -> bytes:
    """CDR of one `edgeflux_msgs/msg/Event`."""
    buf = bytearray(_stamp(stamp_ns))
    buf.extend(struct.pack("<Q", tick))
    _string(buf, kind)
    _string(buf, detail)
    return _HEADER + bytes(buf)


@dataclass(frozen=True)
class Tick:
    """A decoded `edgeflux_msgs/msg/Tick`."""

    stamp_ns: int
    tick: int
    observation: npt.NDArray[np.float32]
    action: npt.NDArray[np.float32]
    latency_ms: float
    late: bool
    interventions: tuple[str, ...]
    bundle: str
    bundle_digest: str


class _Reader:
    def __init__(self, data: bytes) -> None:
        if data[:4] != _HEADER:
            raise ValueError(f"not little-endian CDR (header {data[:4].hex()})")
        self.buf = memoryview(data)[4:]
        self.pos = 0

    def take(self, fmt: str, align: int) -> tuple[Any, ...]:
        self.pos += -self.pos % align
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError("message ends early")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def floats(self) -> npt.NDArray[np.float32]:
        (n,) = self.take("<I", 4)
        if self.pos + 4 * n > len(self.buf):
            raise ValueError("message ends inside a float32 array")
        arr = np.frombuffer(self.buf, "<f4", n, self.pos).astype(np.float32)
        self.pos += 4 * n
        return arr

    def string(self) -> str:
        (n,) = self.take("<I", 4)
        if n == 0 or self.pos + n > len(self.buf):
            raise ValueError("malformed string")
        text = bytes(self.buf[self.pos : self.pos + n - 1]).decode()
        self.pos += n
        return text


def decode_tick(data: bytes) -> Tick:
    """The inverse of `encode_tick`; ValueError says what is malformed."""
    r = _Reader(data)
    sec, nanosec = r.take("<iI", 4)
    (tick,) = r.take("<Q", 8)
    obs, act = r.floats(), r.floats()
    latency, late = r.take("<f?", 4)
    (n,) = r.take("<I", 4)
    if n > len(data):
        raise ValueError("malformed interventions")
    reasons = tuple(r.string() for _ in range(n))
    return Tick(
        sec * 1_000_000_000 + nanosec, tick, obs, act, float(latency), bool(late), reasons,
        r.string(), r.string(),
    )  # fmt: skip
