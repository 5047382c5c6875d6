# ruff: noqa: E501  (a table of cases, one per line)
"""Hostile MQTT payloads a device with a valid certificate can send on its own topics.

Each case is (name, kind, payload, the reason ingest must drop it for). Every one is
well formed enough to pass the broker (right topic, right device) and each once
stalled or crashed ingest before its field was validated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from protos import telemetry_pb2

Case = tuple[str, str, bytes, str]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def good_batch(device: str, seq: int, at: dt.datetime | None = None) -> bytes:
    b = telemetry_pb2.TelemetryBatch(device_id=device, sequence=seq)
    p = b.points.add(loop_p50_ms=1.0, loop_p99_ms=2.0, ticks=100, deadline_misses=1)
    p.at.FromDatetime(at or dt.datetime.now(dt.UTC))
    p.interventions["clamp"] = 1
    p.update_state = "RUNNING"
    return b.SerializeToString()


def good_event(device: str, seq: int) -> bytes:
    ev = telemetry_pb2.Event(device_id=device, sequence=seq, kind="update", state="RUNNING")
    ev.at.FromDatetime(dt.datetime.now(dt.UTC))
    return ev.SerializeToString()


def _batch(device: str, seq: int, edit: Callable[[telemetry_pb2.TelemetryPoint], None]) -> bytes:
    b = telemetry_pb2.TelemetryBatch(device_id=device, sequence=seq)
    p = b.points.add(loop_p50_ms=1.0, ticks=10)
    p.at.FromDatetime(dt.datetime.now(dt.UTC))
    edit(p)
    return b.SerializeToString()


def _event(device: str, seq: int, **fields: object) -> bytes:
    ev = telemetry_pb2.Event(device_id=device, sequence=seq, kind="update")
    for k, v in fields.items():
        setattr(ev, k, v)
    return ev.SerializeToString()


def _state(device: str, **fields: object) -> bytes:
    st = telemetry_pb2.DeviceState(device_id=device, online=True)
    for k, v in fields.items():
        setattr(st, k, v)
    return st.SerializeToString()


def _set(attr: str, value: object) -> Callable[[telemetry_pb2.TelemetryPoint], None]:
    """Set a (dotted) field of the point, e.g. ``at.seconds``."""

    def edit(p: telemetry_pb2.TelemetryPoint) -> None:
        target: object = p
        *path, last = attr.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)

    return edit


def _interventions(**counts: int) -> Callable[[telemetry_pb2.TelemetryPoint], None]:
    def edit(p: telemetry_pb2.TelemetryPoint) -> None:
        for k, v in counts.items():
            p.interventions[k] = v

    return edit


def _event_at(device: str, seq: int, seconds: int) -> bytes:
    ev = telemetry_pb2.Event(device_id=device, sequence=seq, kind="update")
    ev.at.seconds = seconds
    return ev.SerializeToString()


def _state_at(device: str, seconds: int) -> bytes:
    st = telemetry_pb2.DeviceState(device_id=device, online=True)
    st.at.seconds = seconds
    return st.SerializeToString()


def _too_many(device: str, seq: int) -> bytes:
    b = telemetry_pb2.TelemetryBatch(device_id=device, sequence=seq)
    for _ in range(1001):
        b.points.add(loop_p50_ms=1.0)
    return b.SerializeToString()


def cases(device: str, seq: int) -> list[Case]:
    """Every hostile case once; telemetry/event cases use sequence numbers from `seq`."""
    u64 = 2**64 - 1
    s = iter(range(seq, seq + 100))
    # fmt: off
    return [
        ("year 10000", "telemetry", _batch(device, next(s), _set("at.seconds", 253402300800)), "bad_time"),
        ("year -1199", "telemetry", _batch(device, next(s), _set("at.seconds", -100_000_000_000)), "bad_time"),
        ("nanos 2e9", "telemetry", _batch(device, next(s), _set("at.nanos", 2_000_000_000)), "bad_time"),
        ("negative nanos", "telemetry", _batch(device, next(s), _set("at.nanos", -1)), "bad_time"),
        ("event year 10000", "events", _event_at(device, next(s), 253402300800), "bad_time"),
        ("state year -1199", "state", _state_at(device, -100_000_000_000), "bad_time"),
        ("sequence 2^64-1", "telemetry", telemetry_pb2.TelemetryBatch(device_id=device, sequence=u64).SerializeToString(), "out_of_range"),
        ("sequence 2^63", "telemetry", telemetry_pb2.TelemetryBatch(device_id=device, sequence=2**63).SerializeToString(), "out_of_range"),
        ("event sequence 2^64-1", "events", _event(device, u64), "out_of_range"),
        ("interventions sum past 2^63", "telemetry", _batch(device, next(s), _interventions(a=2**62, b=2**62)), "out_of_range"),
        ("one intervention 2^64-1", "telemetry", _batch(device, next(s), _interventions(a=u64)), "out_of_range"),
        ("ticks 2^64-1", "telemetry", _batch(device, next(s), _set("ticks", u64)), "out_of_range"),
        ("deadline misses 2^64-1", "telemetry", _batch(device, next(s), _set("deadline_misses", u64)), "out_of_range"),
        ("bundle sequence 2^64-1", "telemetry", _batch(device, next(s), _bundle_seq(u64)), "out_of_range"),
        ("NUL in update_state", "telemetry", _batch(device, next(s), _set("update_state", "RUN\x00")), "bad_string"),
        ("NUL in intervention key", "telemetry", _batch(device, next(s), _interventions(**{"a\x00b": 1})), "bad_string"),
        ("NUL in bundle name", "telemetry", _batch(device, next(s), _set("active_bundle.name", "p\x00")), "bad_string"),
        ("NUL in event detail", "events", _event(device, next(s), detail="x\x00y"), "bad_string"),
        ("NUL in event kind", "events", _event(device, next(s), kind="up\x00"), "bad_string"),
        ("NUL in state runtime_version", "state", _state(device, runtime_version="1\x00"), "bad_string"),
        ("runtime_version 65 chars", "state", _state(device, runtime_version="v" * 65), "bad_string"),
        ("event reason_code 65 chars", "events", _event(device, next(s), reason_code="R" * 65), "bad_string"),
        ("update_state 33 chars", "telemetry", _batch(device, next(s), _set("update_state", "S" * 33)), "bad_string"),
        ("bundle version 65 chars", "telemetry", _batch(device, next(s), _bundle_version("9" * 65)), "bad_string"),
        ("70 intervention kinds", "telemetry", _batch(device, next(s), _interventions(**{f"k{i}": 1 for i in range(70)})), "oversized"),
        ("NaN", "telemetry", _batch(device, next(s), _set("cpu_percent", float("nan"))), "malformed"),
        ("-Inf", "telemetry", _batch(device, next(s), _set("temperature_c", float("-inf"))), "malformed"),
        ("1001 points", "telemetry", _too_many(device, next(s)), "oversized"),
        ("garbage bytes", "telemetry", b"\xff\xfe\x00garbage", "malformed"),
        ("invalid UTF-8 string", "events", b"\x0a\x02\xc3\x28", "malformed"),
        ("truncated protobuf", "telemetry", good_batch(device, 1)[:-3], "malformed"),
        ("no sequence", "telemetry", telemetry_pb2.TelemetryBatch(device_id=device).SerializeToString(), "malformed"),
        ("event without kind", "events", _event(device, next(s), kind=""), "malformed"),
        ("spoofed device_id", "telemetry", good_batch("someone-else", next(s)), "device_mismatch"),
        ("state of another device", "state", _state("someone-else"), "device_mismatch"),
        ("300 KB payload", "telemetry", b"\x00" * 300_000, "oversized"),
    ]
    # fmt: on


def _bundle_seq(value: int) -> Callable[[telemetry_pb2.TelemetryPoint], None]:
    def edit(p: telemetry_pb2.TelemetryPoint) -> None:
        p.active_bundle.name = "pick"
        p.active_bundle.sequence = value

    return edit


def _bundle_version(value: str) -> Callable[[telemetry_pb2.TelemetryPoint], None]:
    def edit(p: telemetry_pb2.TelemetryPoint) -> None:
        p.active_bundle.name = "pick"
        p.active_bundle.version = value

    return edit
