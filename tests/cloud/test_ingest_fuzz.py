"""Property tests of every MQTT payload decoder: whatever a device (or a forged
publisher) sends, the decoder answers with a typed result — never an exception — and
what it accepts the real store takes: every message is acknowledged, none fails.

A small budget runs with the rest of the tests; ``-m slow`` runs a large one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest import Decoded, Dropped, Ingest, IngestSettings, decode
from cloud.ingest_decode import INT64_MAX, MAX_POINTS
from cloud.mqtt import CloudMqttSettings, Delivery
from cloud.store import Store
from fleet._hints import HintGate
from fleet.mqtt import topic
from protos import telemetry_pb2
from tests.budgets import slow_budget
from tests.cloud.poison import good_batch
from tests.servers import free_port

SMALL = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
LARGE = settings(
    max_examples=slow_budget(full=3000, ci=300),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

u64 = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1])
i64 = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 253402300799, 253402300800])
i32 = st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 999_999_999, 1_000_000_000])
text = st.text(max_size=80) | st.sampled_from(["", "\x00", "a\x00b", "x" * 200, "é" * 70])
number = st.floats(allow_nan=True, allow_infinity=True)


def _stamp(ts: Any, seconds: int, nanos: int) -> None:
    ts.seconds, ts.nanos = seconds, nanos


@st.composite
def _bundle_into(draw: st.DrawFn, ref: Any) -> None:
    if draw(st.booleans()):
        ref.name, ref.version = draw(text), draw(text)
        ref.sequence, ref.policy_sha256 = draw(u64), draw(text)


@st.composite
def telemetry(draw: st.DrawFn, device: str) -> bytes:
    b = telemetry_pb2.TelemetryBatch(device_id=draw(st.sampled_from([device, device, "x"])))
    b.sequence = draw(u64)
    for _ in range(draw(st.integers(0, 4))):
        p = b.points.add()
        _stamp(p.at, draw(i64), draw(i32))
        p.loop_p50_ms, p.loop_p99_ms, p.cpu_percent = draw(number), draw(number), draw(number)
        p.temperature_c, p.disk_free_bytes = draw(number), draw(number)
        p.ticks, p.deadline_misses = draw(u64), draw(u64)
        for k in draw(st.lists(text, max_size=3)):
            p.interventions[k] = draw(u64)
        p.update_state = draw(text)
        draw(_bundle_into(p.active_bundle))
    return b.SerializeToString()


@st.composite
def event(draw: st.DrawFn, device: str) -> bytes:
    ev = telemetry_pb2.Event(device_id=draw(st.sampled_from([device, device, "x"])))
    ev.sequence = draw(u64)
    _stamp(ev.at, draw(i64), draw(i32))
    ev.kind, ev.state, ev.reason_code = draw(text), draw(text), draw(text)
    ev.detail = draw(st.text(max_size=5000) | text)
    draw(_bundle_into(ev.bundle))
    return ev.SerializeToString()


@st.composite
def state(draw: st.DrawFn, device: str) -> bytes:
    st_ = telemetry_pb2.DeviceState(device_id=draw(st.sampled_from([device, device, "x"])))
    st_.online = draw(st.booleans())
    _stamp(st_.at, draw(i64), draw(i32))
    st_.runtime_version = draw(text)
    return st_.SerializeToString()


@st.composite
def mutated(draw: st.DrawFn, device: str) -> bytes:
    fixed = dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)  # same bytes each run
    data = bytearray(good_batch(device, draw(st.integers(1, 1000)), at=fixed))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def message(device: str) -> st.SearchStrategy[tuple[str, bytes]]:
    kinds = st.sampled_from(["telemetry", "events", "state", "updates"])
    return st.one_of(
        st.tuples(st.just("telemetry"), telemetry(device)),
        st.tuples(st.just("events"), event(device)),
        st.tuples(st.just("state"), state(device)),
        st.tuples(kinds, st.binary(max_size=600)),
        st.tuples(kinds, mutated(device)),
    )


def _check_decoded(d: Decoded, now: dt.datetime) -> None:
    limit = now + dt.timedelta(seconds=300)
    assert 0 <= d.sequence <= INT64_MAX
    stamps: list[dt.datetime] = []
    strings: list[str] = [d.runtime_version]
    if d.telemetry is not None:
        assert len(d.telemetry) <= MAX_POINTS
        for p in d.telemetry:
            stamps.append(p.at)
            strings.append(p.update_state)
            assert 0 <= p.safety_interventions <= INT64_MAX
            assert all(isinstance(k, str) and "\x00" not in k for k in p.extra["interventions"])
    if d.event is not None:
        stamps.append(d.event.at)
        strings += [d.event.kind, d.event.state, d.event.reason_code, d.event.detail]
    if d.at is not None:
        stamps.append(d.at)
    assert all(s <= limit for s in stamps)
    assert all("\x00" not in s for s in strings)


def _decode_property(kind_payload: tuple[str, bytes]) -> None:
    kind, payload = kind_payload
    now = dt.datetime.now(dt.UTC)
    d = decode(topic("robot-f", kind), payload, now)
    assert isinstance(d, (Decoded, Dropped))
    if isinstance(d, Dropped):
        assert d.reason and d.reason.isidentifier()
    else:
        _check_decoded(d, now)


@SMALL
@given(message("robot-f"))
def test_ingest_decoder_answers_every_payload_with_a_typed_result(m: tuple[str, bytes]) -> None:
    _decode_property(m)


@pytest.mark.slow
@LARGE
@given(message("robot-f"))
def test_ingest_decoder_answers_every_payload_with_a_typed_result_large(
    m: tuple[str, bytes],
) -> None:
    _decode_property(m)


# ------------------------------------------------- what the decoder accepts, the store takes


class _Acks:
    def __init__(self) -> None:
        self.mids: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.mids.append(mid)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ingest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ingest]:
    """Ingest over a real store: SQLite, and PostgreSQL (stricter: NUL, column widths)."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("fuzz") / "plane.db"
        url = f"sqlite:///{path}"
    else:
        url = str(request.getfixturevalue("postgres").create_database("ingest_fuzz"))
    store = Store.open(url)
    store.add_device("robot-f", "0" * 64)
    mqtt = CloudMqttSettings(host="127.0.0.1", port=free_port())
    yield Ingest(store, mqtt, IngestSettings(), quarantine=lambda _items: None)
    store.close()


def _store_property(ing: Ingest, batch: list[tuple[str, bytes]]) -> None:
    """Everything is acknowledged; nothing the decoder accepted is refused by the store."""
    acks = _Acks()
    now = dt.datetime.now(dt.UTC)
    work = [
        (Delivery(topic("robot-f", k), p, mid, 1, acks), now) for mid, (k, p) in enumerate(batch)
    ]
    before = ing.counters["errors"]
    ing._process(work)  # raises only if the database is unreachable
    assert sorted(acks.mids) == list(range(len(batch)))  # every one acknowledged
    assert ing.counters["errors"] == before
    assert ing.counters["dropped.store_refused"] == 0  # validation caught everything


def _batches() -> st.SearchStrategy[list[tuple[str, bytes]]]:
    return st.lists(message("robot-f"), min_size=1, max_size=8)


def test_every_accepted_message_is_stored_and_acknowledged(ingest: Ingest) -> None:
    run: Callable[[list[tuple[str, bytes]]], None] = lambda b: _store_property(ingest, b)  # noqa: E731
    given(_batches())(SMALL(run))()


@pytest.mark.slow
def test_every_accepted_message_is_stored_and_acknowledged_large(ingest: Ingest) -> None:
    run: Callable[[list[tuple[str, bytes]]], None] = lambda b: _store_property(ingest, b)  # noqa: E731
    given(_batches())(LARGE(run))()


# ------------------------------------------------------------------- the robot's hint decoder


def _hint_property(payload: bytes) -> None:
    gate = HintGate(lambda _name: 5, 0.0, lambda: 0.0)
    hint = gate.offer(payload)
    if hint is not None:
        assert hint.sequence > 5 and len(hint.rollout_id) <= 64
        assert gate.take() == hint
    assert sum(gate.counters.values()) >= 1


@st.composite
def hints(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    msg = telemetry_pb2.UpdateHint(bundle_name=draw(text), rollout_id=draw(text))
    msg.sequence, msg.generation = draw(u64), draw(u64)
    return msg.SerializeToString()


@SMALL
@given(hints())
def test_hint_decoder_answers_every_payload_without_raising(payload: bytes) -> None:
    _hint_property(payload)


@pytest.mark.slow
@LARGE
@given(hints())
def test_hint_decoder_answers_every_payload_without_raising_large(payload: bytes) -> None:
    _hint_property(payload)
