"""MQTT 5 on robots and on ingest: persistent sessions that lose nothing across a
reconnect, refused subscriptions that are said out loud, and a clean fall back to
3.1.1 on a broker without MQTT 5.

Real Mosquitto: the `broker-config` configuration, and for refused subscriptions
one with Mosquitto's dynamic-security plugin (the generated configuration's ACL file
grants every SUBACK and filters at delivery; a plugin answers 0x87).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.ingest import Ingest, IngestSettings
from cloud.mqtt import CloudMqtt, CloudMqttSettings
from cloud.pki import FleetCA, broker_username, subject_for
from cloud.store import Store
from cloud.testing import running_plane
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from tests.cloud.poison import good_batch
from tests.fleet.conftest import INGEST, Pki
from tests.fleet.test_ingest import ingest_settings, running_ingest
from tests.servers import Mosquitto, missing_service, run_mosquitto, wait_until

DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'plane.db'}")
    s.add_device("robot-1", "0" * 64)
    yield s
    s.close()


def _subacked(t: MqttTransport) -> bool:
    """No subscription of `t` still waits for its SUBACK."""
    return not t._subacks.waiting()


def _robot(pki: Pki, port: int, name: str = "robot-1") -> MqttTransport:
    ca, crt, key = pki.identity(name)
    return MqttTransport(MqttSettings(port=port, tls=TlsFiles(ca, crt, key)), name)


@pytest.mark.services
def test_telemetry_queued_while_ingest_is_away_arrives_once_under_mqtt_5(
    pki: Pki, broker: Mosquitto, store: Store
) -> None:
    robot = _robot(pki, broker.port)
    robot.start()
    try:
        assert robot.wait_connected(10), robot.last_error
        assert robot.protocol == "5"
        acked: list[int] = []

        def send(seq: int) -> None:
            assert robot.publish(
                topic("robot-1", "telemetry"), good_batch("robot-1", seq), lambda: acked.append(1)
            )

        with running_ingest(store, pki, broker) as ing:
            assert ing._mqtt.mqtt5, "ingest speaks MQTT 5 to Mosquitto"
            for seq in range(1, 21):
                send(seq)
            wait_until(lambda: ing.counters["stored"] >= 20, 20, "the first 20 stored")
        # Ingest is away: the broker acknowledges the robot and queues for ingest's
        # session (clean_start=False, Session Expiry Interval "never").
        for seq in range(21, 61):
            send(seq)
        wait_until(lambda: len(acked) == 60, 20, "the broker to acknowledge all 60")
        with running_ingest(store, pki, broker) as ing:
            wait_until(lambda: ing.counters["stored"] >= 40, 20, "the queued 40 stored")
    finally:
        robot.stop()
    rows = store.telemetry("robot-1", limit=1000)
    assert len(rows) == 60
    log = broker.log.read_text(errors="replace")
    ingest_user = broker_username(subject_for("service", INGEST))
    assert f"as {ingest_user} (p5, c0" in log  # MQTT 5, clean start off
    assert "as O=EdgeFlux fleet,OU=device,CN=robot-1 (p5, c0" in log


@pytest.mark.services
def test_a_robot_session_survives_its_reconnect_under_mqtt_5(pki: Pki, broker: Mosquitto) -> None:
    """A hint sent while the robot is away is delivered when it is back (session
    expiry a day), exactly as its 3.1.1 persistent session did."""
    got: list[bytes] = []
    received = threading.Event()

    def robot() -> MqttTransport:
        t = _robot(pki, broker.port, "robot-2")
        t.subscribe(topic("robot-2", "updates"), lambda _t, p: (got.append(p), received.set()))
        return t

    first = robot()
    first.start()
    assert first.wait_connected(10)
    assert first.protocol == "5" and first.refused == {}
    first.stop()
    pca, pcrt, pkey = pki.identity("edgeflux-control-plane")
    pub = CloudMqtt(
        CloudMqttSettings(port=broker.port, ca=pca, cert=pcrt, key=pkey),
        clean_session=True,
        mqtt5=True,
    )
    pub.start()
    try:
        assert pub.publish(topic("robot-2", "updates"), b"hint", wait_s=10, expiry_s=600)
    finally:
        pub.stop()
    again = robot()
    again.start()
    try:
        assert received.wait(10), "the hint queued in robot-2's MQTT 5 session was lost"
        assert got == [b"hint"]
    finally:
        again.stop()


def _dynsec_broker(pki: Pki, tmp: Path) -> Iterator[Mosquitto]:
    """Mosquitto with the dynamic-security plugin: robot-1 may subscribe to its own
    updates only; every other identity (robot-2, ingest) to nothing."""
    if not DYNSEC.is_file():
        missing_service(f"{DYNSEC} is not installed (Debian package mosquitto)")
    robot1 = broker_username(subject_for("device", "robot-1"))
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [{"username": robot1, "roles": [{"rolename": "robot-1"}]}],
        "groups": [],
        "roles": [
            {
                "rolename": "robot-1",
                "acls": [
                    {
                        "acltype": "subscribeLiteral",
                        "topic": topic("robot-1", "updates"),
                        "allow": True,
                    }
                ],
            }
        ],
    }
    path = tmp / "dynsec.json"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    conf = f"""per_listener_settings false
allow_anonymous false
plugin {DYNSEC}
plugin_opt_config_file {path}
listener {{port}} 127.0.0.1
cafile {pki.ca}
certfile {pki.server_cert}
keyfile {pki.server_key}
require_certificate true
use_subject_as_username true
use_username_as_clientid true
"""
    with run_mosquitto(conf) as b:
        yield b


@pytest.fixture
def dynsec_broker(pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _dynsec_broker(pki, tmp_path / "dynsec")


@pytest.mark.services
@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt3"])
def test_a_refused_subscription_is_logged_with_topic_and_code_and_counted(
    pki: Pki, dynsec_broker: Mosquitto, mqtt5: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ca, crt, key = pki.identity("robot-1")
    settings = MqttSettings(port=dynsec_broker.port, tls=TlsFiles(ca, crt, key), mqtt5=mqtt5)
    t = MqttTransport(settings, "robot-1")
    own, other = topic("robot-1", "updates"), topic("robot-2", "updates")
    t.subscribe(own, lambda _t, _p: None)
    t.subscribe(other, lambda _t, _p: None)
    caplog.set_level(logging.ERROR, logger="fleet.mqtt")
    t.start()
    try:
        assert t.wait_connected(10), t.last_error
        assert t.protocol == ("5" if mqtt5 else "3.1.1")
        wait_until(lambda: t.counters["subscriptions_refused"] == 1, 10, "the SUBACK")
        assert t.refused == {other: 0x87 if mqtt5 else 0x80}
        lines = [r.getMessage() for r in caplog.records if other in r.getMessage()]
        assert lines and ("0x87" if mqtt5 else "0x80") in lines[0]
        assert not [r for r in caplog.records if own in r.getMessage()]
    finally:
        t.stop()


@pytest.mark.services
def test_a_robot_whose_own_hint_subscription_is_refused_says_so(
    pki: Pki, dynsec_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="fleet.mqtt")
    t = _robot(pki, dynsec_broker.port, "robot-2")
    own = topic("robot-2", "updates")
    t.subscribe(own, lambda _t, _p: None)
    t.start()
    try:
        assert t.wait_connected(10), t.last_error
        wait_until(lambda: own in t.refused, 10, "the SUBACK")
        assert t.refused[own] == 0x87
        msg = next(r.getMessage() for r in caplog.records if own in r.getMessage())
        assert "robot-2" in msg and "refused" in msg and "0x87" in msg
    finally:
        t.stop()


@pytest.mark.services
def test_ingest_counts_a_refused_subscription(
    pki: Pki, dynsec_broker: Mosquitto, store: Store
) -> None:
    ing = Ingest(store, ingest_settings(pki, dynsec_broker), IngestSettings(flush_ms=5))
    ing.start()
    try:
        wait_until(lambda: ing.counters["subscriptions_refused"] == 3, 10, "three SUBACKs")
        assert set(ing._mqtt.refused.values()) == {0x87}
    finally:
        ing.stop()


def test_robot_and_ingest_fall_back_to_3_1_1_on_the_embedded_broker(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", broker=True) as plane:
        plane.device("robot-1")
        port = plane.broker_port
        ingest = Ingest(
            plane.store,
            CloudMqttSettings(port=port, client_id="ingest-embedded"),
            IngestSettings(flush_ms=5),
        )
        ingest.start()
        dev = MqttTransport(MqttSettings(port=port), "robot-1")
        dev.start()
        try:
            assert dev.wait_connected(15), dev.last_error
            assert dev.protocol == "3.1.1" and not ingest._mqtt.mqtt5
            acked = threading.Event()
            assert dev.publish(topic("robot-1", "telemetry"), good_batch("robot-1", 1), acked.set)
            assert acked.wait(10)
            wait_until(lambda: ingest.counters["stored"] == 1, 10, "telemetry stored")
            assert ingest.counters["subscriptions_refused"] == 0
        finally:
            dev.stop()
            ingest.stop()


@pytest.mark.services
def test_a_publish_the_broker_refuses_is_not_acknowledged_to_the_spool(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    """Under MQTT 5 the broker answers 135; the message must stay in the robot's
    spool (no on_ack), unlike 3.1.1 where it is acknowledged and dropped."""
    ca = FleetCA.load(pki.dir / "ca-copy.crt", pki.dir / "ca.key", b"test-passphrase")
    crt, key = ca.issue_operator("robot-3", "viewer").write(tmp_path, "op")
    t = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(pki.ca, crt, key)), "robot-3")
    t.start()
    try:
        assert t.wait_connected(10), t.last_error
        acked = threading.Event()
        assert t.publish(topic("robot-3", "telemetry"), good_batch("robot-3", 1), acked.set)
        wait_until(lambda: t.counters["publishes_refused"] == 1, 10, "the PUBACK")
        assert not acked.is_set()
    finally:
        t.stop()


@pytest.mark.services
def test_a_robot_session_ends_after_its_configured_expiry(pki: Pki, broker: Mosquitto) -> None:
    """session_expiry_s is what the broker keeps: 1 s here, so a hint sent 2 s after
    the robot left finds no session (and the robot converges by polling instead)."""
    import time

    ca, crt, key = pki.identity("robot-3")
    settings = MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key), session_expiry_s=1)
    got: list[bytes] = []
    first = MqttTransport(settings, "robot-3")
    first.subscribe(topic("robot-3", "updates"), lambda _t, p: got.append(p))
    first.start()
    assert first.wait_connected(10)
    first.stop()
    time.sleep(2.0)  # past the session's expiry (what is tested is time itself)
    pca, pcrt, pkey = pki.identity("edgeflux-control-plane")
    pub = CloudMqtt(
        CloudMqttSettings(port=broker.port, ca=pca, cert=pcrt, key=pkey), clean_session=True
    )
    pub.start()
    try:
        assert pub.publish(topic("robot-3", "updates"), b"late", wait_s=10)
    finally:
        pub.stop()
    again = MqttTransport(settings, "robot-3")
    again.subscribe(topic("robot-3", "updates"), lambda _t, p: got.append(p))
    again.start()
    try:
        assert again.wait_connected(10)
        # A control after the new SUBACK: it arrives, the late hint was never queued.
        wait_until(lambda: again.refused == {} and _subacked(again), 10, "the SUBACK")
        pub2 = CloudMqtt(
            CloudMqttSettings(port=broker.port, ca=pca, cert=pcrt, key=pkey), clean_session=True
        )
        pub2.start()
        try:
            assert pub2.publish(topic("robot-3", "updates"), b"now", wait_s=10)
        finally:
            pub2.stop()
        wait_until(lambda: b"now" in got, 10, "the control hint")
        assert got == [b"now"]
    finally:
        again.stop()


@pytest.mark.services
def test_a_broker_refusing_the_client_is_reported_at_once_not_taken_for_no_mqtt_5() -> None:
    """Not authorised is no protocol question: neither the robot nor the plane's client
    tries 3.1.1 on it, and the plane's says the code instead of waiting out a 3.1.1 try."""
    from cloud.mqtt import CloudMqttError

    with run_mosquitto("listener {port} 127.0.0.1\nallow_anonymous false\n") as broker:
        plane = CloudMqtt(CloudMqttSettings(port=broker.port, client_id="hints"), mqtt5=True)
        started = time.monotonic()
        with pytest.raises(CloudMqttError, match=r"refused 'hints'.*0x87 Not authorized"):
            plane.start(timeout_s=10)
        assert time.monotonic() - started < 5  # no 10 s wait for a 3.1.1 CONNACK
        assert plane.mqtt5
        dev = MqttTransport(MqttSettings(port=broker.port, reconnect_cap_s=0.2), "robot-1")
        dev.start()
        try:
            wait_until(lambda: "0x87" in dev.last_error, 10, "the robot's refusal")
            assert not dev.is_connected() and dev.protocol == "5"
        finally:
            dev.stop()
