"""The decoder's fast path against its full checks: on any input, :func:`decode` must
answer exactly what :func:`decode_checked` answers (the same rows accepted, the same
reason and detail refused), on random messages near every limit, on random bytes and
on the hostile payloads ingest is known to meet."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest_decode import (
    DEFAULT_MAX_SKEW_S,
    INT64_MAX,
    MAX_POINTS,
    Decoded,
    decode,
    decode_checked,
)
from protos import telemetry_pb2
from tests.cloud.poison import cases
from tests.cloud.test_ingest_fuzz import message, mutated, telemetry

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
DEVICE = "robot-a"
TOPIC = f"edgeflux/v1/devices/{DEVICE}/telemetry"
RECEIVED = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
_now_s = int(RECEIVED.timestamp())

# A valid message with at most one field at (or just past) its limit: the fast path
# must take the valid ones and leave every invalid one to the full checks.
_skew = int(DEFAULT_MAX_SKEW_S)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "count": st.integers(0, 1000) | st.sampled_from([0, INT64_MAX]),
    "small": st.integers(0, 1000),  # intervention counts: their sum must fit too
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "seconds": st.integers(_now_s - 10**6, _now_s + 10**6)
    | st.sampled_from([1, _now_s + _skew, _now_s + _skew + 1, 253_402_300_799]),
    "nanos": st.integers(0, 999_999_999),
}
EDGE: dict[str, st.SearchStrategy[Any]] = {
    "count": st.sampled_from([INT64_MAX, INT64_MAX + 1, 2**64 - 1]),
    "small": st.sampled_from([INT64_MAX, INT64_MAX + 1, 2**64 - 1]),
    "number": st.sampled_from([1e308, -0.0, float("inf"), float("-inf"), float("nan")]),
    "seconds": st.sampled_from(
        [0, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800]
    ),
    "nanos": st.sampled_from([0, -1, 999_999_999, 1_000_000_000]),
}
NUMBERS = (
    "loop_p50_ms",
    "loop_p99_ms",
    "loop_p999_ms",
    "cpu_percent",
    "memory_percent",
    "disk_free_bytes",
    "temperature_c",
)
TEXTS = {"key": 64, "update_state": 32, "name": 128, "version": 64, "policy_sha256": 64}
FIELDS = [
    "device",
    "sequence",
    "points",
    *NUMBERS,
    "ticks",
    "deadline_misses",
    "kinds",
    "value",
    "sum",
    "seconds",
    "nanos",
    "bundle.sequence",
    *TEXTS,
]


def _text(limit: int, edge: bool) -> st.SearchStrategy[str]:
    if edge:
        return st.sampled_from(["\x00", "a\x00", "x" * limit, "x" * (limit + 1), "é" * (limit + 1)])
    return st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=limit
    )


@st.composite
def near_limits(draw: st.DrawFn, edge: str | None) -> bytes:

    def value(field: str, kind: str) -> Any:
        return draw(EDGE[kind] if edge == field else VALID[kind])

    b = telemetry_pb2.TelemetryBatch(device_id="x" if edge == "device" else DEVICE)
    b.sequence = value("sequence", "count") or 1
    n = draw(st.sampled_from([MAX_POINTS, MAX_POINTS + 1])) if edge == "points" else 1
    n = n if edge == "points" else draw(st.integers(0 if edge is None else 1, 3))
    for i in range(n):
        p = b.points.add()
        if i and edge == "points":  # a big batch: copies of the first point
            p.CopyFrom(b.points[0])
            continue
        p.at.seconds, p.at.nanos = value("seconds", "seconds"), value("nanos", "nanos")
        for f in NUMBERS:
            setattr(p, f, value(f, "number"))
        p.ticks, p.deadline_misses = value("ticks", "count"), value("deadline_misses", "count")
        kinds = draw(st.sampled_from([64, 65])) if edge == "kinds" else draw(st.integers(0, 3))
        kinds = max(kinds, 1) if edge in ("key", "value") else kinds
        for k in range(kinds):
            key = draw(_text(TEXTS["key"], edge == "key")) if k < 3 else f"kind-{k}"
            p.interventions[key] = value("value", "small")
        if edge == "sum":
            p.interventions["a"], p.interventions["b"] = INT64_MAX // 2 + 1, INT64_MAX // 2 + 1
        p.update_state = draw(_text(TEXTS["update_state"], edge == "update_state"))
        if draw(st.booleans()) or edge in ("name", "version", "policy_sha256", "bundle.sequence"):
            ref = p.active_bundle
            ref.name = draw(_text(TEXTS["name"], edge == "name")) or "b"
            ref.version = draw(_text(TEXTS["version"], edge == "version"))
            ref.policy_sha256 = draw(_text(TEXTS["policy_sha256"], edge == "policy_sha256"))
            ref.sequence = value("bundle.sequence", "count")
            ref.oms_root_digest = draw(st.text(max_size=80))  # not stored: never checked
    return b.SerializeToString()


def _same(topic: str, payload: bytes, max_bytes: int = 256 * 1024) -> Any:
    fast = decode(topic, payload, RECEIVED, max_bytes)
    full = decode_checked(topic, payload, RECEIVED, max_bytes)
    assert fast == full
    return fast


@pytest.mark.parametrize("edge", [None, *FIELDS])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fast_path_answers_as_the_full_checks_near_every_limit(
    edge: str | None, data: st.DataObject
) -> None:
    _same(TOPIC, data.draw(near_limits(edge)))


@SETTINGS
@given(payload=telemetry(DEVICE) | mutated(DEVICE), max_bytes=st.sampled_from([40, 256 * 1024]))
def test_fast_path_answers_as_the_full_checks_on_random_telemetry(
    payload: bytes, max_bytes: int
) -> None:
    _same(TOPIC, payload, max_bytes)


@SETTINGS
@given(msg=message(DEVICE), device=st.sampled_from([DEVICE, "robot-b", "bad/../id", ""]))
def test_fast_path_answers_as_the_full_checks_on_any_kind_and_topic(
    msg: tuple[str, bytes], device: str
) -> None:
    kind, payload = msg
    _same(f"edgeflux/v1/devices/{device}/{kind}", payload)


HOSTILE = cases(DEVICE, 1)


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_payloads_are_refused_with_the_same_reason(
    case: tuple[str, str, bytes, str],
) -> None:
    _name, kind, payload, reason = case
    topic = f"edgeflux/v1/devices/{DEVICE}/{kind}"
    now = dt.datetime.now(dt.UTC)
    fast = decode(topic, payload, now)
    assert fast == decode_checked(topic, payload, now)
    assert not isinstance(fast, Decoded) and fast.reason == reason


def test_the_fast_path_takes_what_robots_send() -> None:
    """Not vacuous: a robot's ordinary message is accepted (by the fast path, whose
    answer the other tests hold to the full checks')."""
    b = telemetry_pb2.TelemetryBatch(device_id=DEVICE, sequence=7)
    p = b.points.add(loop_p50_ms=0.1, loop_p99_ms=0.2, ticks=50, update_state="RUNNING")
    p.interventions["clamp"] = 2
    p.active_bundle.name, p.active_bundle.version = "pendulum", "1.0.0"
    p.at.FromDatetime(RECEIVED - dt.timedelta(seconds=1))
    got = _same(TOPIC, b.SerializeToString())
    assert isinstance(got, Decoded) and got.telemetry is not None
    (point,) = got.telemetry
    assert point.at == RECEIVED - dt.timedelta(seconds=1)
    assert point.safety_interventions == 2 and point.active_bundle is not None
