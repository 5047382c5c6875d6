"""Cloud ingest: validation (pure), and through a real Mosquitto into a real store."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloud.mqtt
import fleet.mqtt
from cloud.ingest import Decoded, Dropped, Ingest, IngestSettings, decode
from cloud.mqtt import CloudMqttSettings
from cloud.store import Store
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from protos import telemetry_pb2
from tests.fleet.conftest import INGEST, Pki
from tests.servers import Mosquitto, wait_until

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _batch(device: str = "robot-1", seq: int = 1, **point: float) -> bytes:
    b = telemetry_pb2.TelemetryBatch(device_id=device, sequence=seq)
    p = b.points.add(loop_p50_ms=1.0, loop_p99_ms=2.0, ticks=100, deadline_misses=5, **point)
    p.at.FromDatetime(NOW)
    p.interventions["clamp"] = 3
    return b.SerializeToString()


def test_topic_contract_is_identical_on_both_sides() -> None:
    for kind in fleet.mqtt.KINDS:
        assert fleet.mqtt.topic("r-1", kind) == cloud.mqtt.topic("r-1", kind)
    assert fleet.mqtt.PREFIX == cloud.mqtt.PREFIX


def test_decode_accepts_a_valid_batch() -> None:
    d = decode(topic("robot-1", "telemetry"), _batch(), NOW)
    assert isinstance(d, Decoded) and d.sequence == 1 and d.telemetry is not None
    point = d.telemetry[0]
    assert point.deadline_miss_rate == pytest.approx(0.05)
    assert point.safety_interventions == 3 and point.at == NOW


@pytest.mark.parametrize(
    ("topic_name", "payload", "reason"),
    [
        ("edgeflux/v1/devices/robot-1/telemetry", b"\xff\xff\xff garbage", "malformed"),
        ("edgeflux/v1/devices/robot-1/telemetry", _batch()[:-3], "malformed"),
        ("edgeflux/v1/devices/robot-1/telemetry", _batch(device="robot-2"), "device_mismatch"),
        ("edgeflux/v1/devices/robot-1/telemetry", _batch(seq=0), "malformed"),
        ("edgeflux/v1/devices/robot-1/telemetry", _batch(cpu_percent=float("nan")), "malformed"),
        ("edgeflux/v1/devices/robot-1/telemetry", b"x" * 300_000, "oversized"),
        ("edgeflux/v1/devices/robot-1/events", _batch(), "malformed"),
        ("edgeflux/v1/devices/+/telemetry", _batch(), "bad_topic"),
        ("other/topic", _batch(), "bad_topic"),
        ("", b"", "bad_topic"),
    ],
)
def test_decode_drops_bad_messages_with_a_reason(
    topic_name: str, payload: bytes, reason: str
) -> None:
    d = decode(topic_name, payload, NOW)
    assert isinstance(d, Dropped), d
    assert d.reason == reason


def test_decode_state_and_event() -> None:
    st = telemetry_pb2.DeviceState(device_id="robot-1", online=True, runtime_version="0.1")
    d = decode(topic("robot-1", "state"), st.SerializeToString(), NOW)
    assert isinstance(d, Decoded) and d.online is True and d.at == NOW
    ev = telemetry_pb2.Event(device_id="robot-1", sequence=9, kind="update", state="VERIFIED")
    e = decode(topic("robot-1", "events"), ev.SerializeToString(), NOW)
    assert isinstance(e, Decoded) and e.event is not None and e.event.state == "VERIFIED"


# --------------------------------------------------------------------------- through a broker


def ingest_settings(pki: Pki, broker: Mosquitto, client_id: str = INGEST) -> CloudMqttSettings:
    # The broker makes the certificate's name the client id: one certificate per replica.
    ca, crt, key = pki.identity(client_id)
    return CloudMqttSettings(
        host="127.0.0.1", port=broker.port, ca=ca, cert=crt, key=key, client_id=client_id
    )


@contextlib.contextmanager
def running_ingest(
    store: Store, pki: Pki, broker: Mosquitto, client_id: str = INGEST, shared: bool = False
) -> Iterator[Ingest]:
    settings = IngestSettings(flush_ms=5, subscription="shared" if shared else "exclusive")
    ing = Ingest(store, ingest_settings(pki, broker, client_id), settings)
    ing.start()
    try:
        yield ing
    finally:
        ing.stop()


@contextlib.contextmanager
def device(pki: Pki, broker: Mosquitto, name: str) -> Iterator[MqttTransport]:
    ca, crt, key = pki.identity(name)
    t = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key)), name)
    t.start()
    try:
        assert t.wait_connected(10), t.last_error
        yield t
    finally:
        t.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'plane.db'}")
    for name in ("robot-1", "robot-2"):
        s.add_device(name, "0" * 64)
    yield s
    s.close()


@pytest.mark.services
def test_ingest_stores_each_batch_once_and_drops_bad_ones(
    pki: Pki, broker: Mosquitto, store: Store
) -> None:
    with running_ingest(store, pki, broker) as ing, device(pki, broker, "robot-1") as dev:
        t = topic("robot-1", "telemetry")
        for payload in (
            _batch(seq=1),
            _batch(seq=1),  # a redelivery
            _batch(seq=2),
            b"\x00garbage\xff",
            _batch(device="robot-2", seq=3),  # payload disagrees with topic/certificate
        ):
            assert dev.publish(t, payload)
        wait_until(lambda: ing.counters["received"] >= 5, 10, "all five at ingest")
        wait_until(
            lambda: (
                ing.counters["stored"]
                + ing.counters["skipped"]
                + ing.counters["dropped.malformed"]
                + ing.counters["dropped.device_mismatch"]
                >= 5
            ),
            10,
            "all five processed",
        )
        assert ing.counters["stored"] == 2 and ing.counters["skipped"] == 1
        assert ing.counters["dropped.malformed"] == 1
        assert ing.counters["dropped.device_mismatch"] == 1
    assert len(store.telemetry("robot-1")) == 2
    assert store.telemetry("robot-2") == []


@pytest.mark.services
def test_ingest_tracks_online_state_and_last_will(
    pki: Pki, broker: Mosquitto, store: Store
) -> None:
    with running_ingest(store, pki, broker), device(pki, broker, "robot-1") as dev:
        st = telemetry_pb2.DeviceState(device_id="robot-1", online=True)
        dev.publish(topic("robot-1", "state"), st.SerializeToString(), retain=True)
        wait_until(lambda: store.require_device("robot-1").online, 10, "robot-1 online")
        st.online = False
        dev.publish(topic("robot-1", "state"), st.SerializeToString(), retain=True)
        wait_until(lambda: not store.require_device("robot-1").online, 10, "robot-1 offline")
        assert store.require_device("robot-1").last_seen is not None


@pytest.mark.services
def test_two_ingest_replicas_split_the_load_and_store_everything_once(
    pki: Pki, broker: Mosquitto, store: Store
) -> None:
    with (
        running_ingest(store, pki, broker, client_id="edgeflux-ingest-a", shared=True) as a,
        running_ingest(store, pki, broker, client_id="edgeflux-ingest-b", shared=True) as b,
        device(pki, broker, "robot-1") as dev,
    ):
        n = 60
        for seq in range(1, n + 1):
            assert dev.publish(topic("robot-1", "telemetry"), _batch(seq=seq))
        wait_until(lambda: a.counters["stored"] + b.counters["stored"] >= n, 15, "all stored")
        assert a.counters["stored"] > 0 and b.counters["stored"] > 0  # the share split them
    assert len(store.telemetry("robot-1", limit=1000)) == n


@pytest.mark.services
def test_two_exclusive_replicas_both_see_everything_and_store_it_once(
    pki: Pki, broker: Mosquitto, store: Store
) -> None:
    with (
        running_ingest(store, pki, broker, client_id="edgeflux-ingest-a") as a,
        running_ingest(store, pki, broker, client_id="edgeflux-ingest-b") as b,
        device(pki, broker, "robot-1") as dev,
    ):
        n = 20
        for seq in range(1, n + 1):
            assert dev.publish(topic("robot-1", "telemetry"), _batch(seq=seq))
        done = lambda: a.counters["stored"] + a.counters["skipped"] >= n  # noqa: E731
        wait_until(lambda: done() and b.counters["stored"] + b.counters["skipped"] >= n, 15)
        assert a.counters["stored"] + b.counters["stored"] == n
    assert len(store.telemetry("robot-1", limit=1000)) == n
