"""MQTT identity is the certificate: no client id takeover, no name shared across roles.

Real Mosquitto with the `broker-config` configuration (``use_subject_as_username``,
``use_username_as_clientid``, an ACL naming every identity by its subject), real
ingest into a real store.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cloud.cli import cloud as cloud_cli
from cloud.pki import FleetCA, PKIError
from cloud.store import Store
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from protos import telemetry_pb2
from tests.cloud.poison import good_batch
from tests.fleet.conftest import INGEST, PUBLISHER, Pki
from tests.fleet.test_ingest import running_ingest
from tests.servers import Mosquitto, wait_until

pytestmark = pytest.mark.services


class _Raw:
    """A bare paho client with a device's certificate asking for any client id."""

    def __init__(self, pki: Pki, broker: Mosquitto, cert_of: str, client_id: str) -> None:
        ca, crt, key = pki.identity(cert_of)
        self.connected = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
        )
        self.client.tls_set(str(ca), str(crt), str(key), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = lambda c, u, f, rc, p: (
            self.connected.set() if not rc.is_failure else None
        )
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'plane.db'}")
    for name in ("robot-1", "robot-2"):
        s.add_device(name, "0" * 64)
    yield s
    s.close()


def test_a_device_asking_for_ingests_client_id_takes_nothing_over(
    pki: Pki, broker: Mosquitto, store: Store
) -> None:
    ca, crt, key = pki.identity("robot-2")
    dev = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key)), "robot-2")
    with running_ingest(store, pki, broker) as ing:
        dev.start()
        assert dev.wait_connected(10)
        n = 40
        for seq in range(1, n + 1):
            assert dev.publish(topic("robot-2", "telemetry"), good_batch("robot-2", seq))
            if seq % 4 == 0:  # robot-1 keeps trying to connect as ingest, clean session
                raw = _Raw(pki, broker, "robot-1", INGEST)
                assert raw.connected.wait(10)
                raw.close()
        wait_until(lambda: ing.counters["stored"] >= n, 20, "every batch stored")
        assert ing._mqtt.is_connected()
        dev.stop()
    assert len(store.telemetry("robot-2", limit=1000)) == n
    # The broker gave the impostor its own subject as client id (c1: its clean session).
    assert "as O=EdgeFlux fleet,OU=device,CN=robot-1 (p2, c1" in broker.log.read_text(
        errors="replace"
    )


def test_a_device_asking_for_anothers_client_id_cannot_discard_its_queued_hint(
    pki: Pki, broker: Mosquitto
) -> None:
    ca, crt, key = pki.identity("robot-2")
    got: list[bytes] = []
    received = threading.Event()

    def robot2() -> MqttTransport:
        t = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key)), "robot-2")
        t.subscribe(topic("robot-2", "updates"), lambda _t, p: (got.append(p), received.set()))
        return t

    first = robot2()
    first.start()
    assert first.wait_connected(10)
    first.stop()  # offline, persistent session keeps the subscription
    pca, pcrt, pkey = pki.identity(PUBLISHER)
    plane = MqttTransport(
        MqttSettings(port=broker.port, tls=TlsFiles(pca, pcrt, pkey)), PUBLISHER, clean_session=True
    )
    plane.start()
    assert plane.wait_connected(10)
    hint = telemetry_pb2.UpdateHint(bundle_name="pick", sequence=7).SerializeToString()
    acked = threading.Event()
    assert plane.publish(topic("robot-2", "updates"), hint, on_ack=acked.set)
    assert acked.wait(10)
    plane.stop()
    raw = _Raw(pki, broker, "robot-1", "robot-2")  # clean session as robot-2's client id
    assert raw.connected.wait(10)
    raw.close()
    again = robot2()
    again.start()
    try:
        assert received.wait(10), "the hint queued for robot-2 was lost"
        assert got == [hint]
    finally:
        again.stop()


def test_names_are_unique_across_roles_and_the_planes_are_reserved(tmp_path: Path) -> None:
    home = tmp_path / "plane"

    def run(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(cloud_cli, [*args, "--home", str(home)])
        return r.exit_code, r.output

    assert CliRunner().invoke(cloud_cli, ["init", str(home)]).exit_code == 0
    assert run("device", "add", "robot-b")[0] == 0
    code, out = run("operator", "add", "robot-b", "--role", "viewer")
    assert code == 1 and "already a device" in out
    assert not (home / "pki" / "operators" / "robot-b.crt").exists()
    assert run("operator", "add", "alice")[0] == 0
    code, out = run("device", "add", "alice")
    assert code == 1 and "already an operator" in out
    for reserved in ("edgeflux-cloud", "edgeflux-ingest", "EdgeFlux-push", "edgeflux"):
        code, out = run("device", "add", reserved)
        assert code == 1 and "reserved" in out, out
        code, out = run("operator", "add", reserved)
        assert code == 1 and "reserved" in out, out
    assert not (home / "pki" / "devices" / "edgeflux-cloud.crt").exists()


def test_the_ca_refuses_reserved_names_for_devices_and_operators() -> None:
    ca = FleetCA.create()
    with pytest.raises(PKIError, match="reserved"):
        ca.issue_device("edgeflux-ingest")
    with pytest.raises(PKIError, match="reserved"):
        ca.issue_operator("edgeflux-cloud", "admin")
    with pytest.raises(PKIError, match="must start with"):
        ca.issue_service("robot-1")
    assert ca.issue_service("edgeflux-ingest-2").cert_pem


def test_broker_config_refuses_a_home_where_an_operator_shares_a_devices_name(
    tmp_path: Path,
) -> None:
    """A collision made before names were checked across roles (here: a certificate
    issued straight from the CA) is caught before the broker is configured."""
    from cloud.home import CloudHome

    home_dir = tmp_path / "plane"
    assert CliRunner().invoke(cloud_cli, ["init", str(home_dir)]).exit_code == 0
    r = CliRunner().invoke(cloud_cli, ["device", "add", "robot-b", "--home", str(home_dir)])
    assert r.exit_code == 0, r.output
    home = CloudHome.at(home_dir)
    home.load_ca().issue_operator("robot-b", "viewer").write(home.operators, "robot-b")
    out = tmp_path / "mosq"
    r = CliRunner().invoke(cloud_cli, ["broker-config", "--home", str(home_dir), "--out", str(out)])
    assert r.exit_code == 1 and "robot-b: both an operator and a device" in r.output
    assert not out.exists()


class _V5:
    """A bare MQTT 5 paho client with any certificate: what it received, PUBACK codes."""

    def __init__(self, broker: Mosquitto, ca: Path, crt: Path, key: Path) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.suback = threading.Event()
        self.connected = threading.Event()
        self._cond = threading.Condition()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="ignored", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.tls_set(str(ca), str(crt), str(key), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.suback.set()
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with self._cond:
            self.acks[mid] = int(rc.value)
            self._cond.notify_all()

    def publish(self, name: str, payload: bytes) -> int:
        """Publish at QoS 1; the PUBACK reason code (135 = not authorised)."""
        mid = self.client.publish(name, payload, qos=1).mid
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.acks, 10), "no PUBACK"
            return self.acks[mid]

    def subscribe(self, name: str) -> None:
        self.suback.clear()
        self.client.subscribe(name, qos=1)
        assert self.suback.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


def _ca(pki: Pki) -> FleetCA:
    return FleetCA.load(pki.dir / "ca-copy.crt", pki.dir / "ca.key", b"test-passphrase")


def test_an_operator_certificate_with_a_devices_name_has_none_of_its_rights(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    """Issued straight from the CA (no name check), CN robot-1 but OU operator: the
    broker names it by its whole subject, which the ACL gives nothing."""
    crt, key = _ca(pki).issue_operator("robot-1", "admin").write(tmp_path, "op")
    impostor = _V5(broker, pki.ca, crt, key)
    ingest = _V5(broker, *pki.identity(INGEST))
    robot = _V5(broker, *pki.identity("robot-1"))
    plane = _V5(broker, *pki.identity(PUBLISHER))
    try:
        ingest.subscribe("edgeflux/v1/devices/+/telemetry")
        ingest.subscribe("edgeflux/v1/devices/+/events")
        impostor.subscribe(topic("robot-1", "updates"))
        robot.subscribe(topic("robot-1", "updates"))
        # publishing as robot-1: refused (MQTT 5 reason code 135), never delivered
        assert impostor.publish(topic("robot-1", "telemetry"), b"forged") == 135
        assert impostor.publish(topic("robot-1", "events"), b"forged") == 135
        assert robot.publish(topic("robot-1", "telemetry"), b"real") == 0  # control
        wait_until(lambda: (topic("robot-1", "telemetry"), b"real") in ingest.got, 10, "real")
        assert [p for _, p in ingest.got] == [b"real"]
        # reading robot-1's hints: the real robot gets it, the impostor nothing
        assert plane.publish(topic("robot-1", "updates"), b"hint") == 0
        wait_until(lambda: robot.got == [(topic("robot-1", "updates"), b"hint")], 10, "hint")
        assert impostor.publish(topic("robot-1", "state"), b"x") == 135  # a round trip
        assert impostor.got == []
    finally:
        for c in (impostor, ingest, robot, plane):
            c.close()


def test_a_device_certificate_cannot_use_the_planes_topics(pki: Pki, broker: Mosquitto) -> None:
    """robot-2 may not write hints (the publisher's right) nor read others' uplink
    (ingest's right), not even its own updates topic for writing."""
    rogue = _V5(broker, *pki.identity("robot-2"))
    robot = _V5(broker, *pki.identity("robot-1"))
    ingest = _V5(broker, *pki.identity(INGEST))
    try:
        robot.subscribe(topic("robot-1", "updates"))
        rogue.subscribe("edgeflux/v1/devices/+/telemetry")
        rogue.subscribe("edgeflux/v1/devices/+/state")
        ingest.subscribe("edgeflux/v1/devices/+/telemetry")
        assert rogue.publish(topic("robot-1", "updates"), b"forged hint") == 135
        assert rogue.publish(topic("robot-2", "updates"), b"own updates") == 135
        assert robot.publish(topic("robot-1", "telemetry"), b"real") == 0
        wait_until(lambda: len(ingest.got) == 1, 10, "ingest to get robot-1's telemetry")
        assert rogue.publish(topic("robot-2", "telemetry"), b"own") == 0  # a round trip
        wait_until(lambda: len(ingest.got) == 2, 10, "ingest to get robot-2's telemetry")
        assert rogue.got == [] and robot.got == []
    finally:
        for c in (rogue, robot, ingest):
            c.close()
