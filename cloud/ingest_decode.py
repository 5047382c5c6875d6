"""Decoding one MQTT message for ingest: every field checked before the store sees it.

:func:`decode` is pure (no I/O) and total: whatever bytes arrive on whatever topic, it
returns either a :class:`Decoded` whose every value fits the store's columns, or a
:class:`Dropped` naming the reason (a short, countable word) and the offending field.
It never raises. What it checks:

- the topic is an EdgeFlux device topic and the payload's ``device_id`` is that device;
- the payload is at most ``max_bytes`` and parses as the topic's protobuf message;
- sequences are 1 … 2^63−1 (the store's BIGINT), counters and their sums fit too;
- numbers are finite; strings hold no NUL (PostgreSQL text cannot) and are no longer
  than their column; at most :data:`MAX_POINTS` points per telemetry message;
- timestamps are valid protobuf timestamps (years 1 … 9999, nanos below 10^9). A stamp
  further than ``max_skew_s`` ahead of the plane's clock is clamped to the time the
  message was received (and counted in :attr:`Decoded.clamped`): a robot with a wrong
  clock keeps reporting, but can never make its data "newest" for ever.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from cloud.mqtt import parse_topic
from cloud.store import EventRecord, TelemetryRecord
from protos import telemetry_pb2

__all__ = [
    "DEFAULT_MAX_SKEW_S",
    "INT64_MAX",
    "MAX_POINTS",
    "Decoded",
    "Dropped",
    "decode",
    "decode_checked",
]

MAX_POINTS = 1_000
"""Points per telemetry message; the agent flushes at most this many per batch."""
MAX_INTERVENTION_KINDS = 64
INT64_MAX = 2**63 - 1
DEFAULT_MAX_SKEW_S = 300.0
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z … 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
# Column widths of the store (devices.*, events.*) and of the bundle reference.
_LIMITS = {
    "kind": 32,
    "state": 32,
    "reason_code": 64,
    "update_state": 32,
    "runtime_version": 64,
    "bundle.name": 128,
    "bundle.version": 64,
    "bundle.policy_sha256": 64,
    "bundle.oms_root_digest": 64,
    "interventions key": 64,
}
MAX_DETAIL = 4000
"""Event details longer than this are cut (free text; the rest is still stored)."""


@dataclass(frozen=True)
class Decoded:
    kind: str
    device_id: str
    sequence: int
    telemetry: list[TelemetryRecord] | None = None
    event: EventRecord | None = None
    online: bool | None = None
    at: dt.datetime | None = None
    runtime_version: str = ""
    clamped: int = 0
    """Timestamps of this message moved back to the receive time (too far in the future)."""


@dataclass(frozen=True)
class Dropped:
    reason: str
    detail: str
    device_id: str = ""
    """The topic's device, when the topic was well formed ('' otherwise)."""


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Clock:
    """Turns protobuf timestamps into datetimes; clamps the future, refuses the invalid."""

    def __init__(self, received: dt.datetime, max_skew_s: float) -> None:
        self.received = received
        self.limit = received + dt.timedelta(seconds=max_skew_s)
        self.clamped = 0

    def stamp(self, ts: Any, field: str) -> dt.datetime:
        seconds, nanos = int(ts.seconds), int(ts.nanos)
        if seconds == 0 and nanos == 0:
            return self.received
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS) or not (0 <= nanos < 1_000_000_000):
            raise _Bad(
                "bad_time",
                f"{field} is not a valid timestamp (seconds={seconds}, nanos={nanos}; "
                "expected years 1..9999, nanos 0..999999999)",
            )
        at = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            seconds=seconds, microseconds=nanos // 1000
        )
        if at > self.limit:
            self.clamped += 1
            return self.received
        return at


def _text(value: str, field: str, limit: int | None = None) -> str:
    if "\x00" in value:
        raise _Bad("bad_string", f"{field} contains a NUL character")
    limit = _LIMITS.get(field, limit)
    if limit is not None and len(value) > limit:
        raise _Bad("bad_string", f"{field} is {len(value)} characters (at most {limit})")
    return value


def _count(value: int, field: str) -> int:
    if not 0 <= value <= INT64_MAX:
        raise _Bad("out_of_range", f"{field} = {value} is beyond 2^63-1")
    return value


def _finite(values: Iterable[float], what: str) -> None:
    if not all(math.isfinite(x) for x in values):
        raise _Bad("malformed", f"{what} has a non-finite number")


def _bundle(ref: Any) -> dict[str, Any] | None:
    if not ref.name:
        return None
    return {
        "name": _text(ref.name, "bundle.name"),
        "version": _text(ref.version, "bundle.version"),
        "sequence": _count(ref.sequence, "bundle.sequence"),
        "policy_sha256": _text(ref.policy_sha256, "bundle.policy_sha256"),
    }


def _sequence(value: int, what: str) -> int:
    if value == 0:
        raise _Bad("malformed", f"{what} has no sequence number")
    if value > INT64_MAX:
        raise _Bad("out_of_range", f"{what} sequence {value} is beyond 2^63-1")
    return value


def _interventions(m: Mapping[str, int], what: str) -> tuple[dict[str, int], int]:
    if len(m) > MAX_INTERVENTION_KINDS:
        raise _Bad("oversized", f"{what}: {len(m)} intervention kinds (at most 64)")
    out = {_text(k, "interventions key"): _count(v, f"interventions[{k!r}]") for k, v in m.items()}
    total = sum(out.values())
    if total > INT64_MAX:
        raise _Bad("out_of_range", f"{what}: interventions sum to {total}, beyond 2^63-1")
    return out, total


_TYPES: dict[str, Any] = {
    "telemetry": telemetry_pb2.TelemetryBatch,
    "events": telemetry_pb2.Event,
    "state": telemetry_pb2.DeviceState,
}


def decode(
    topic_name: str,
    payload: bytes,
    now: dt.datetime,
    max_bytes: int = 256 * 1024,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> Decoded | Dropped:
    """Validate one MQTT message received at `now`; never raises (see the module doc).

    Telemetry (nearly every message) takes a fast path first: the same checks, inlined.
    Anything it does not accept as it stands, and every other kind, goes through
    :func:`decode_checked`, which then names the reason."""
    parsed = _TOPICS.get(topic_name)
    if parsed is None:
        parsed = _topic(topic_name)
    if parsed and parsed[1] == "telemetry" and len(payload) <= max_bytes:
        try:
            fast = _fast_telemetry(parsed[0], payload, now, max_skew_s)
        except Exception:  # e.g. a parser error: the full checks name it
            fast = None
        if fast is not None:
            return fast
    return decode_checked(topic_name, payload, now, max_bytes, max_skew_s)


_TOPICS: dict[str, tuple[str, str] | tuple[()]] = {}
"""Topic → (device, kind), or () for a topic that is not a device's: a fleet's topics
repeat, and splitting and matching each costs more than the rest of a small message."""
_MAX_TOPICS = 200_000


def _topic(name: str) -> tuple[str, str] | tuple[()]:
    if len(_TOPICS) >= _MAX_TOPICS:
        _TOPICS.clear()
    parsed = _TOPICS[name] = parse_topic(name) or ()
    return parsed


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TelemetryBatch = telemetry_pb2.TelemetryBatch
_KEY_LIMIT = _LIMITS["interventions key"]
_STATE_LIMIT = _LIMITS["update_state"]


def _fast_telemetry(
    device: str, payload: bytes, received: dt.datetime, max_skew_s: float
) -> Decoded | None:
    """The telemetry message as :func:`decode_checked` decodes it, or None if any check
    fails (or anything is unusual): then the caller runs the full checks."""
    msg = _TelemetryBatch.FromString(payload)
    seq = msg.sequence
    if msg.device_id != device or not 0 < seq <= INT64_MAX:
        return None
    pts = msg.points
    if len(pts) > MAX_POINTS:
        return None
    limit = received + dt.timedelta(seconds=max_skew_s)
    clamped = 0
    out = []
    for p in pts:
        p50, p99, p999 = p.loop_p50_ms, p.loop_p99_ms, p.loop_p999_ms
        cpu, mem, disk, temp = p.cpu_percent, p.memory_percent, p.disk_free_bytes, p.temperature_c
        # x * 0.0 is ±0.0 for every finite x and NaN for ±inf and NaN (no overflow).
        if p50 * 0.0 + p99 * 0.0 + p999 * 0.0 + cpu * 0.0 + mem * 0.0 + disk * 0.0 + temp * 0.0:
            return None
        ticks, misses = p.ticks, p.deadline_misses
        if ticks > INT64_MAX or misses > INT64_MAX:
            return None
        interventions: dict[str, int] = {}
        total = 0
        iv = p.interventions
        if iv:
            if len(iv) > MAX_INTERVENTION_KINDS:
                return None
            for k, v in iv.items():
                if v > INT64_MAX or len(k) > _KEY_LIMIT or "\x00" in k:
                    return None
                interventions[k] = v
                total += v
            if total > INT64_MAX:
                return None
        state = p.update_state
        if state and (len(state) > _STATE_LIMIT or "\x00" in state):
            return None
        bundle = None
        ref = p.active_bundle
        if ref.name:
            bundle = _fast_bundle(ref)
            if bundle is None:
                return None
        ts = p.at
        secs, nanos = ts.seconds, ts.nanos
        if secs == 0 and nanos == 0:
            at = received
        else:
            if not (_MIN_SECONDS <= secs <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
                return None
            at = _EPOCH + dt.timedelta(seconds=secs, microseconds=nanos // 1000)
            if at > limit:
                clamped += 1
                at = received
        out.append(
            TelemetryRecord(
                at,
                p50,
                p99,
                (misses / ticks) if ticks else 0.0,
                total,
                cpu,
                mem,
                temp,
                {
                    "loop_p999_ms": p999,
                    "ticks": ticks,
                    "deadline_misses": misses,
                    "interventions": interventions,
                    "disk_free_bytes": disk,
                },
                state,
                bundle,
            )
        )
    return Decoded("telemetry", device, seq, telemetry=out, clamped=clamped)


def _fast_bundle(ref: Any) -> dict[str, Any] | None:
    """:func:`_bundle`'s result for a reference that passes its checks, else None."""
    name, version, sha = ref.name, ref.version, ref.policy_sha256
    if (
        len(name) > _LIMITS["bundle.name"]
        or len(version) > _LIMITS["bundle.version"]
        or len(sha) > _LIMITS["bundle.policy_sha256"]
        or "\x00" in name
        or "\x00" in version
        or "\x00" in sha
        or ref.sequence > INT64_MAX
    ):
        return None
    return {"name": name, "version": version, "sequence": ref.sequence, "policy_sha256": sha}


def decode_checked(
    topic_name: str,
    payload: bytes,
    now: dt.datetime,
    max_bytes: int = 256 * 1024,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> Decoded | Dropped:
    """:func:`decode` without its fast path: every check one by one, each refusal with
    its reason and field. The reference the fast path is tested against."""
    parsed = parse_topic(topic_name)
    if parsed is None:
        return Dropped("bad_topic", f"topic {topic_name[:200]!r} is not an EdgeFlux device topic")
    device, kind = parsed
    try:
        return _decode(device, kind, payload, _Clock(now, max_skew_s), max_bytes)
    except _Bad as bad:
        return Dropped(bad.reason, f"{kind} from {device}: {bad.detail}", device)
    except Exception as exc:  # a decoder bug must cost one message, never the loop
        return Dropped("invalid", f"{kind} from {device}: {type(exc).__name__}: {exc}", device)


def _decode(device: str, kind: str, payload: bytes, clock: _Clock, max_bytes: int) -> Decoded:
    if len(payload) > max_bytes:
        raise _Bad("oversized", f"{len(payload)} bytes > {max_bytes}")
    if kind not in _TYPES:
        raise _Bad("bad_topic", f"ingest does not consume {kind}")
    msg_type = _TYPES[kind]
    try:
        msg = msg_type.FromString(payload)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise _Bad("malformed", f"not a {msg_type.__name__}: {exc}") from exc
    if msg.device_id != device:
        raise _Bad("device_mismatch", f"payload claims device_id {msg.device_id[:64]!r}")
    if kind == "state":
        return Decoded(
            kind,
            device,
            0,
            online=msg.online,
            at=clock.stamp(msg.at, "at"),
            runtime_version=_text(msg.runtime_version, "runtime_version"),
            clamped=clock.clamped,
        )
    sequence = _sequence(msg.sequence, kind)
    if kind == "events":
        if not msg.kind:
            raise _Bad("malformed", "event has no kind")
        ev = EventRecord(
            device_id=device,
            sequence=sequence,
            at=clock.stamp(msg.at, "at"),
            kind=_text(msg.kind, "kind"),
            state=_text(msg.state, "state"),
            reason_code=_text(msg.reason_code, "reason_code"),
            detail=_text(msg.detail, "detail")[:MAX_DETAIL],
            bundle=_bundle(msg.bundle),
        )
        return Decoded(kind, device, sequence, event=ev, clamped=clock.clamped)
    if len(msg.points) > MAX_POINTS:
        raise _Bad("oversized", f"{len(msg.points)} points (at most {MAX_POINTS})")
    points = []
    for i, p in enumerate(msg.points):
        what = f"point {i}"
        _finite(
            (
                p.loop_p50_ms,
                p.loop_p99_ms,
                p.loop_p999_ms,
                p.cpu_percent,
                p.memory_percent,
                p.disk_free_bytes,
                p.temperature_c,
            ),
            what,
        )
        ticks = _count(p.ticks, f"{what} ticks")
        misses = _count(p.deadline_misses, f"{what} deadline_misses")
        interventions, total = _interventions(p.interventions, what)
        points.append(
            TelemetryRecord(
                at=clock.stamp(p.at, f"{what} at"),
                loop_p50_ms=p.loop_p50_ms,
                loop_p99_ms=p.loop_p99_ms,
                deadline_miss_rate=(misses / ticks) if ticks else 0.0,
                safety_interventions=total,
                cpu_percent=p.cpu_percent,
                memory_percent=p.memory_percent,
                temperature_c=p.temperature_c,
                extra={
                    "loop_p999_ms": p.loop_p999_ms,
                    "ticks": ticks,
                    "deadline_misses": misses,
                    "interventions": interventions,
                    "disk_free_bytes": p.disk_free_bytes,
                },
                update_state=_text(p.update_state, "update_state"),
                active_bundle=_bundle(p.active_bundle),
            )
        )
    return Decoded(kind, device, sequence, telemetry=points, clamped=clock.clamped)
