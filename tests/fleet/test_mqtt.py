"""The MQTT transport and the generated broker configuration, against a real Mosquitto
with mTLS, identities from certificates, per-device ACLs and a CRL."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, parse_topic, topic
from protos import telemetry_pb2
from tests.fleet.conftest import INGEST, PUBLISHER, REVOKED, Pki, tls_broker
from tests.servers import Mosquitto, wait_until

pytestmark = pytest.mark.services


@contextlib.contextmanager
def client(
    pki: Pki, broker: Mosquitto, name: str, *, connect: bool = True, **kw: object
) -> Iterator[MqttTransport]:
    ca, crt, key = pki.identity(name)
    settings = MqttSettings(
        host="127.0.0.1",
        port=broker.port,
        tls=TlsFiles(ca, crt, key),
        reconnect_base_s=0.05,
        reconnect_cap_s=0.5,
        **kw,  # type: ignore[arg-type]
    )
    t = MqttTransport(settings, name)
    t.start()
    try:
        if connect:
            assert t.wait_connected(10), f"{name} did not connect: {t.last_error}"
        yield t
    finally:
        t.stop()


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, topic_name: str, payload: bytes) -> None:
        with self.lock:
            self.items.append((topic_name, payload))

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.items]


def _subscribe_and_wait(
    t: MqttTransport, flt: str, inbox: Inbox, probe_topic: str, pub: MqttTransport
) -> None:
    """Subscribe, then publish probes until one arrives (the SUBACK has no callback here)."""
    t.subscribe(flt, inbox)
    wait_until(
        lambda: pub.publish(probe_topic, b"probe") and b"probe" in inbox.payloads(),
        10,
        f"subscription {flt} to be live",
    )


def test_topics_are_exactly_the_design_contract() -> None:
    assert topic("robot-1", "telemetry") == "edgeflux/v1/devices/robot-1/telemetry"
    assert parse_topic("edgeflux/v1/devices/robot-1/updates") == ("robot-1", "updates")
    assert parse_topic("edgeflux/v1/devices/+/updates") is None
    assert parse_topic("edgeflux/v1/devices/robot-1/updates/x") is None
    with pytest.raises(Exception, match="not valid in an MQTT topic"):
        topic("robot/1", "telemetry")


def test_device_telemetry_reaches_ingest_shared_subscription_over_mtls(
    pki: Pki, broker: Mosquitto
) -> None:
    inbox = Inbox()
    with client(pki, broker, INGEST) as ingest, client(pki, broker, "robot-1") as dev:
        _subscribe_and_wait(
            ingest,
            "$share/edgeflux-ingest/edgeflux/v1/devices/+/telemetry",
            inbox,
            topic("robot-1", "telemetry"),
            dev,
        )
        batch = telemetry_pb2.TelemetryBatch(device_id="robot-1", sequence=7)
        acked = threading.Event()
        assert dev.publish(topic("robot-1", "telemetry"), batch.SerializeToString(), acked.set)
        assert acked.wait(5), "no PUBACK"
        wait_until(lambda: batch.SerializeToString() in inbox.payloads(), 5, "telemetry at ingest")


def test_device_cannot_publish_under_another_devices_id(pki: Pki, broker: Mosquitto) -> None:
    inbox = Inbox()
    with client(pki, broker, INGEST) as ingest, client(pki, broker, "robot-1") as dev:
        _subscribe_and_wait(
            ingest, "edgeflux/v1/devices/+/telemetry", inbox, topic("robot-1", "telemetry"), dev
        )
        dev.publish(topic("robot-2", "telemetry"), b"forged")
        dev.publish(topic("robot-1", "telemetry"), b"marker")
        # Per-client ordering: once the later marker arrived the forged one would have too.
        wait_until(lambda: b"marker" in inbox.payloads(), 5, "marker")
        assert b"forged" not in inbox.payloads()


def test_device_cannot_read_another_devices_updates(pki: Pki, tmp_path: Path) -> None:
    """Under `--authz acl-file` a wildcard subscription is granted and filtered at
    delivery (under the default, dynsec, it is refused: tests/fleet/test_broker_dynsec.py)."""
    with tls_broker(pki, tmp_path / "broker", authz="acl-file") as broker:
        _cannot_read_another_devices_updates(pki, broker)


def _cannot_read_another_devices_updates(pki: Pki, broker: Mosquitto) -> None:
    inbox = Inbox()
    with client(pki, broker, PUBLISHER) as plane, client(pki, broker, "robot-1") as dev:
        _subscribe_and_wait(
            dev, "edgeflux/v1/devices/+/updates", inbox, topic("robot-1", "updates"), plane
        )
        plane.publish(topic("robot-2", "updates"), b"not-yours")
        plane.publish(topic("robot-1", "updates"), b"yours")
        wait_until(lambda: b"yours" in inbox.payloads(), 5, "own update")
        assert b"not-yours" not in inbox.payloads()


def test_connection_without_a_client_certificate_is_refused(pki: Pki, broker: Mosquitto) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    # MQTT 3.1.1 CONNECT, client id "anon", clean session, keepalive 30.
    connect = bytes([0x10, 16, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 4]) + b"anon"
    refused = False
    try:
        with (
            socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(connect)
            refused = tls.recv(4) == b""  # TLS 1.3 reports the missing cert after the handshake
    except (ssl.SSLError, ConnectionError):
        refused = True
    assert refused, "the broker accepted a client without a certificate"


def test_revoked_device_is_refused(pki: Pki, broker: Mosquitto) -> None:
    with client(pki, broker, REVOKED, connect=False) as dev:
        assert not dev.wait_connected(2.0)
        assert dev.counters["connects"] == 0


def test_socket_has_tcp_nodelay(pki: Pki, broker: Mosquitto) -> None:
    with client(pki, broker, "robot-1") as dev:
        sock = dev._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_reconnects_after_the_broker_restarts(pki: Pki, broker: Mosquitto) -> None:
    with client(pki, broker, "robot-1") as dev:
        broker.stop()
        wait_until(lambda: not dev.is_connected(), 10, "disconnect to be noticed")
        broker.restart()
        wait_until(dev.is_connected, 15, "reconnect")
        assert dev.counters["connects"] == 2


def test_oversized_incoming_payload_is_dropped_and_counted(pki: Pki, broker: Mosquitto) -> None:
    inbox = Inbox()
    with (
        client(pki, broker, PUBLISHER) as plane,
        client(pki, broker, "robot-1", max_payload_bytes=1024) as dev,
    ):
        _subscribe_and_wait(
            dev, topic("robot-1", "updates"), inbox, topic("robot-1", "updates"), plane
        )
        plane.publish(topic("robot-1", "updates"), b"x" * 4096)
        plane.publish(topic("robot-1", "updates"), b"after")
        wait_until(lambda: b"after" in inbox.payloads(), 5, "message after the big one")
        assert dev.counters["dropped_oversize"] == 1
        assert all(len(p) <= 1024 for p in inbox.payloads())


_WILL_CHILD = """
import sys, time
from pathlib import Path
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from protos import telemetry_pb2
port, ca, crt, key = int(sys.argv[1]), *map(Path, sys.argv[2:5])
offline = telemetry_pb2.DeviceState(device_id="robot-2", online=False).SerializeToString()
online = telemetry_pb2.DeviceState(device_id="robot-2", online=True).SerializeToString()
t = MqttTransport(MqttSettings(port=port, tls=TlsFiles(ca, crt, key), keepalive_s=2), "robot-2",
                  will=(topic("robot-2", "state"), offline))
t.start()
assert t.wait_connected(10)
t.publish(topic("robot-2", "state"), online, retain=True)
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_marks_a_killed_device_offline(pki: Pki, broker: Mosquitto) -> None:
    ca, crt, key = pki.identity("robot-2")
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _WILL_CHILD, str(broker.port), str(ca), str(crt), str(key)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        states: list[bool] = []

        def on_state(_t: str, payload: bytes) -> None:
            states.append(telemetry_pb2.DeviceState.FromString(payload).online)

        with client(pki, broker, PUBLISHER) as plane:
            plane.subscribe(topic("robot-2", "state"), on_state)
            wait_until(lambda: True in states, 10, "retained online state")
            child.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
            child.wait(5)
            wait_until(lambda: states[-1] is False, 15, "last will (offline)")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
