"""One robot must never hurt the fleet: poison messages cost only themselves.

Real Mosquitto (the `broker-config` configuration), a real plane with ingest, SQLite
and PostgreSQL: one device sends every hostile case of :mod:`tests.cloud.poison`
(1,000 messages) interleaved with normal traffic from 20 others, part of it while the
plane is down; every normal message is stored, every poison message is dropped with
its reason, acknowledged (never redelivered) and kept in the quarantine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import cloud.ingest
from cloud.broker_config import BrokerConfig, write_broker_config
from cloud.cli import cloud as cloud_cli
from cloud.home import CloudHome, init_home
from cloud.ingest import Decoded, Dropped, Ingest, IngestSettings, decode
from cloud.mqtt import CloudMqttSettings, Delivery
from cloud.store import Store, TelemetryRecord
from cloud.store.quarantine import QuarantineRecord, QuarantineStore
from cloud.testing import running_plane
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from tests.cloud.poison import cases, good_batch, good_event
from tests.servers import Mosquitto, free_port, run_mosquitto, wait_until

GOOD = [f"robot-{i:02d}" for i in range(20)]
POISON = "robot-poison"


def _home(tmp: Path, store_url: str) -> CloudHome:
    home = init_home(tmp / "plane")
    text = home.config_file.read_text() + f'database_url = "{store_url}"\n'
    home.config_file.write_text(text)
    return home


@contextlib.contextmanager
def _broker(home: CloudHome, tmp: Path) -> Iterator[Mosquitto]:
    port = free_port()
    cfg = BrokerConfig(
        ca=home.ca_cert,
        cert=home.server_cert,
        key=home.server_key,
        port=port,
        bind="127.0.0.1",
        devices=(*GOOD, POISON),
    )
    conf, _ = write_broker_config(cfg, tmp / "mosq")
    with run_mosquitto(conf.read_text(), port=port) as b:
        yield b


@contextlib.contextmanager
def _device(home: CloudHome, port: int, name: str) -> Iterator[MqttTransport]:
    tls = TlsFiles(home.ca_cert, home.devices / f"{name}.crt", home.devices / f"{name}.key")
    t = MqttTransport(MqttSettings(port=port, tls=tls), name)
    t.start()
    try:
        assert t.wait_connected(15), t.last_error
        yield t
    finally:
        t.stop()


def _send_round(
    devs: dict[str, MqttTransport], poison: MqttTransport, seqs: Iterator[int], n: int
) -> int:
    """`n` rounds: one batch and one event from each good device, then poison cases."""
    hostile = itertools.cycle(cases(POISON, 1_000_000))
    sent = 0
    for _ in range(n):
        for name, dev in devs.items():
            seq = next(seqs)
            assert dev.publish(topic(name, "telemetry"), good_batch(name, seq))
            assert dev.publish(topic(name, "events"), good_event(name, seq))
        for _ in range(10):
            _, kind, payload, _ = next(hostile)
            assert poison.publish(topic(POISON, kind), payload)
            sent += 1
    return sent


def _stored(store: Store, expected: int) -> bool:
    return all(
        len(store.telemetry(n, limit=10_000)) >= expected
        and len(store.events(n, limit=10_000)) >= expected
        for n in GOOD
    )


@pytest.mark.services
def test_a_thousand_poison_messages_cost_no_normal_message_across_a_restart(
    tmp_path: Path, store_url: str
) -> None:
    home = _home(tmp_path, store_url)
    rounds_up, rounds_down = 60, 40  # 10 poison per round: 1,000 poison in all
    with _broker(home, tmp_path) as broker:
        url = f"mqtts://localhost:{broker.port}"
        plane_args = {"overrides": {"broker_url": url}, "ingest": True}
        with running_plane(home.root, **plane_args) as plane:  # type: ignore[arg-type]
            for name in (*GOOD, POISON):
                plane.device(name)
        seqs = itertools.count(1)
        with contextlib.ExitStack() as stack:
            devs = {n: stack.enter_context(_device(home, broker.port, n)) for n in GOOD}
            poison = stack.enter_context(_device(home, broker.port, POISON))
            with running_plane(home.root, **plane_args) as plane:  # type: ignore[arg-type]
                ingest = plane.control.ingest
                sent = _send_round(devs, poison, seqs, rounds_up)
                wait_until(lambda: _stored(plane.store, rounds_up), 120, "first half stored")
                wait_until(
                    lambda: (
                        sum(v for k, v in ingest.counters.items() if k.startswith("dropped."))
                        >= sent
                    ),
                    60,
                    "every poison message dropped",
                )
                first = dict(ingest.counters)
                metric = plane.control.metrics.registry.get_sample_value(
                    "edgeflux_cloud_ingest_dropped_total", {"reason": "bad_time"}
                )
                assert metric is not None and metric > 0
            # The plane is down: the broker queues for ingest's persistent session.
            sent += _send_round(devs, poison, seqs, rounds_down)
            with running_plane(home.root, **plane_args) as plane:  # type: ignore[arg-type]
                ingest = plane.control.ingest
                total = rounds_up + rounds_down
                wait_until(lambda: _stored(plane.store, total), 120, "second half stored")
                wait_until(
                    lambda: (
                        sum(v for k, v in ingest.counters.items() if k.startswith("dropped."))
                        >= rounds_down * 10
                    ),
                    60,
                    "every queued poison message dropped",
                )
                second = dict(ingest.counters)
                for name in GOOD:
                    assert len(plane.store.telemetry(name, limit=10_000)) == total
                    assert len(plane.store.events(name, limit=10_000)) == total
                assert plane.store.telemetry(POISON) == []
                quarantined = QuarantineStore(plane.store.engine).recent(POISON, limit=10_000)
    assert sent == 1000
    dropped = lambda c: sum(v for k, v in c.items() if k.startswith("dropped."))  # noqa: E731
    # Acknowledged once dropped: the restarted plane sees only what was sent while down.
    assert dropped(first) == rounds_up * 10 and dropped(second) == rounds_down * 10
    assert first.get("errors", 0) == 0 and second.get("errors", 0) == 0
    # Every hostile case was dropped for its own reason.
    expected = {}
    for _, _, _, reason in cases(POISON, 1):
        expected[reason] = expected.get(reason, 0) + 1
    assert {k.removeprefix("dropped.") for k in first if k.startswith("dropped.")} == set(expected)
    # Bounded: the newest 100 of this device are kept, each with its reason and payload.
    assert len(quarantined) == 100
    assert {q.reason for q in quarantined} <= set(expected)
    assert all(q.device_id == POISON and q.payload for q in quarantined)
    shown = CliRunner().invoke(
        cloud_cli, ["quarantine", "--home", str(home.root), "--device", POISON, "--json"]
    )
    assert shown.exit_code == 0, shown.output
    assert len(shown.output.splitlines()) == 20
    assert json.loads(shown.output.splitlines()[0])["device_id"] == POISON


# ------------------------------------------------------------- a store error isolates its row


class _Acks:
    """Records the PUBACKs ingest sends (the broker side of a Delivery)."""

    def __init__(self) -> None:
        self.mids: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.mids.append(mid)


def test_a_row_the_store_refuses_is_dropped_alone(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the validation let through but the database refuses (here: a counter
    beyond BIGINT, forced past the decoder) costs that one message only."""
    store = Store.open(store_url)
    for name in ("robot-a", "robot-b"):
        store.add_device(name, "0" * 64)
    real = decode

    def forced(topic_name: str, payload: bytes, now: dt.datetime, *a: object) -> object:
        d = real(topic_name, payload, now, *a)  # type: ignore[arg-type]
        if isinstance(d, Decoded) and d.device_id == "robot-b" and d.sequence == 2:
            assert d.telemetry is not None
            bad = TelemetryRecord(**{**d.telemetry[0].__dict__, "safety_interventions": 2**64})
            return Decoded("telemetry", "robot-b", 2, telemetry=[bad])
        return d

    monkeypatch.setattr(cloud.ingest, "decode", forced)
    quarantine: list[object] = []
    mqtt = CloudMqttSettings(host="127.0.0.1", port=free_port())
    ing = Ingest(store, mqtt, IngestSettings(), quarantine=quarantine.extend)
    acks = _Acks()
    batch = []
    for mid, (name, seq) in enumerate(
        [("robot-a", 1), ("robot-b", 1), ("robot-b", 2), ("robot-a", 2), ("robot-b", 3)]
    ):
        d = Delivery(topic(name, "telemetry"), good_batch(name, seq), mid, 1, acks)
        batch.append((d, dt.datetime.now(dt.UTC)))
    ing._process(batch)
    assert sorted(acks.mids) == [0, 1, 2, 3, 4]  # all acknowledged, the refused one too
    assert ing.counters["stored"] == 4 and ing.counters["dropped.store_refused"] == 1
    assert ing.counters["batch_row_by_row"] == 1, ing.counters
    assert len(store.telemetry("robot-a")) == 2 and len(store.telemetry("robot-b")) == 2
    assert [getattr(q, "reason", None) for q in quarantine] == ["store_refused"]
    store.close()


def test_every_hostile_case_is_dropped_for_its_reason() -> None:
    now = dt.datetime.now(dt.UTC)
    for name, kind, payload, reason in cases("robot-x", 1):
        d = decode(topic("robot-x", kind), payload, now)
        assert isinstance(d, Dropped), name
        assert d.reason == reason, (name, d)
        assert d.device_id == "robot-x"


# ------------------------------------------------------------------------- clock sanity


def _process(ing: Ingest, *messages: tuple[str, bytes]) -> None:
    acks = _Acks()
    batch = [
        (Delivery(t, p, mid, 1, acks), dt.datetime.now(dt.UTC))
        for mid, (t, p) in enumerate(messages)
    ]
    ing._process(batch)
    assert sorted(acks.mids) == list(range(len(messages)))


def test_a_future_timestamp_never_becomes_newest(store_url: str) -> None:
    """9999-12-31 is clamped to the receive time: later real telemetry still moves the
    device's health and active bundle, and presence cannot set last_seen to 9999."""
    from protos import telemetry_pb2

    store = Store.open(store_url)
    store.add_device("robot-a", "0" * 64)
    ing = Ingest(store, CloudMqttSettings(host="127.0.0.1", port=free_port()), IngestSettings())
    far = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    _process(ing, (topic("robot-a", "telemetry"), good_batch("robot-a", 1, at=far)))
    assert ing.counters["clamped_time"] == 1
    health = store.require_device("robot-a").health
    assert health is not None and health["at"] < "2100"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    b = telemetry_pb2.TelemetryBatch(device_id="robot-a", sequence=2)
    p = b.points.add(loop_p50_ms=7.0)
    p.at.FromDatetime(later)
    p.active_bundle.name, p.active_bundle.version = "pick", "1.1.0"
    _process(ing, (topic("robot-a", "telemetry"), b.SerializeToString()))
    dev = store.require_device("robot-a")
    assert dev.health is not None and dev.health["loop_p50_ms"] == 7.0
    assert dev.active_bundle is not None and dev.active_bundle["version"] == "1.1.0"
    st = telemetry_pb2.DeviceState(device_id="robot-a", online=True)
    st.at.FromDatetime(far)
    _process(ing, (topic("robot-a", "state"), st.SerializeToString()))
    seen = store.require_device("robot-a").last_seen
    assert seen is not None and seen.year < 2100
    store.close()


def test_health_poisoned_before_the_clamp_heals_with_the_next_point(store_url: str) -> None:
    """A health summary dated 9999 (stored before stamps were clamped) is not "newest"."""
    from cloud.store.ingest_batch import record_telemetry_many

    store = Store.open(store_url)
    store.add_device("robot-a", "0" * 64)
    far = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    point = TelemetryRecord(at=far, loop_p50_ms=1.0)
    assert record_telemetry_many(store, [("robot-a", 1, [point], now)]) == [True]
    fresh = TelemetryRecord(at=now, loop_p50_ms=2.0)
    limit = now + dt.timedelta(minutes=5)
    assert record_telemetry_many(store, [("robot-a", 2, [fresh], now)], limit) == [True]
    health = store.require_device("robot-a").health
    assert health is not None and health["loop_p50_ms"] == 2.0
    store.close()


def test_skew_within_the_limit_is_kept_and_beyond_is_clamped() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    near = now + dt.timedelta(seconds=299)
    far = now + dt.timedelta(seconds=301)
    for at, expected, clamped in ((near, near, 0), (far, now, 1)):
        d = decode(topic("robot-x", "telemetry"), good_batch("robot-x", 1, at=at), now)
        assert isinstance(d, Decoded) and d.telemetry is not None
        assert d.telemetry[0].at == expected
        assert d.clamped == clamped
    d = decode(topic("robot-x", "telemetry"), good_batch("robot-x", 1, at=far), now, max_skew_s=600)
    assert isinstance(d, Decoded) and d.clamped == 0


# --------------------------------------------------------------------------- quarantine


def test_the_quarantine_is_bounded_per_device_and_in_all(store_url: str) -> None:
    store = Store.open(store_url)
    qs = QuarantineStore(store.engine, per_device=5, total=12, payload_bytes=8)
    now = dt.datetime.now(dt.UTC)

    def rec(device: str, i: int) -> QuarantineRecord:
        return QuarantineRecord(
            device_id=device,
            topic=f"edgeflux/v1/devices/{device}/telemetry",
            reason="bad_string",
            detail=f"message {i} with a NUL \x00 quoted",
            received_at=now,
            payload=b"\x00" * 20,
            size_bytes=20,
        )

    qs.put_many([rec("noisy", i) for i in range(50)])
    qs.put_many([rec("quiet", 0)])
    noisy = qs.recent("noisy")
    assert [r.detail.split()[1] for r in noisy] == ["49", "48", "47", "46", "45"]
    assert qs.recent("quiet")[0].payload == b"\x00" * 8 and qs.recent("quiet")[0].size_bytes == 20
    for d in ("a", "b", "c"):
        qs.put_many([rec(d, i) for i in range(5)])
    assert len(qs.recent(limit=100)) == 12  # the oldest rows went first
    assert qs.recent("quiet") == []
    store.close()


def test_a_revoked_robots_retained_presence_does_not_bring_it_back(store_url: str) -> None:
    from protos import telemetry_pb2

    store = Store.open(store_url)
    store.add_device("robot-a", "0" * 64)
    store.revoke_device("robot-a")
    ing = Ingest(store, CloudMqttSettings(host="127.0.0.1", port=free_port()), IngestSettings())
    st = telemetry_pb2.DeviceState(device_id="robot-a", online=True, runtime_version="9.9")
    _process(ing, (topic("robot-a", "state"), st.SerializeToString()))
    dev = store.require_device("robot-a")
    assert not dev.online and dev.runtime_version != "9.9"
    store.close()
