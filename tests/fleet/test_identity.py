"""MQTT identity is the certificate: no client id takeover, no name shared across roles.

Real Mosquitto with the `broker-config` configuration (``use_identity_as_username``,
``use_username_as_clientid``), real ingest into a real store.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

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
    # The broker gave the impostor its own name as client id (c1: its clean session).
    assert "as robot-1 (p2, c1" in broker.log.read_text(errors="replace")


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
