"""Hints over MQTT 5 where the broker speaks it: they expire for a robot that stays
offline; against a 3.1.1-only broker (the embedded one) the publisher falls back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cloud.mqtt import CloudMqtt, CloudMqttSettings
from cloud.testing import running_plane
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from protos import telemetry_pb2
from tests.fleet.conftest import PUBLISHER, Pki
from tests.servers import Mosquitto


def _hint(seq: int) -> bytes:
    return telemetry_pb2.UpdateHint(bundle_name="pendulum", sequence=seq).SerializeToString()


@pytest.mark.services
def test_a_hint_expires_for_a_robot_that_stays_offline(pki: Pki, broker: Mosquitto) -> None:
    ca, crt, key = pki.identity("robot-2")
    got: list[int] = []
    second = threading.Event()

    def robot() -> MqttTransport:
        t = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key)), "robot-2")

        def on(_t: str, payload: bytes) -> None:
            got.append(telemetry_pb2.UpdateHint.FromString(payload).sequence)
            if got[-1] == 2:
                second.set()

        t.subscribe(topic("robot-2", "updates"), on)
        return t

    first = robot()
    first.start()
    assert first.wait_connected(10)
    first.stop()  # offline; its persistent session queues what the plane sends
    pca, pcrt, pkey = pki.identity(PUBLISHER)
    settings = CloudMqttSettings(port=broker.port, ca=pca, cert=pcrt, key=pkey)
    pub = CloudMqtt(settings, clean_session=True, mqtt5=True)
    pub.start()
    try:
        assert pub.mqtt5, "Mosquitto speaks MQTT 5"
        assert pub.publish(topic("robot-2", "updates"), _hint(1), wait_s=10, expiry_s=1)
        time.sleep(2.2)  # past the first hint's expiry (what is tested is time itself)
        assert pub.publish(topic("robot-2", "updates"), _hint(2), wait_s=10, expiry_s=600)
    finally:
        pub.stop()
    again = robot()
    again.start()
    try:
        assert second.wait(10), "the unexpired hint was not delivered"
        assert got == [2]  # the expired one never was
    finally:
        again.stop()


def test_the_publisher_falls_back_to_mqtt_3_on_a_broker_without_5(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", broker=True) as plane:
        port = plane.broker_port
        dev = MqttTransport(MqttSettings(port=port), "robot-1")
        got = threading.Event()
        dev.subscribe(topic("robot-1", "updates"), lambda _t, _p: got.set())
        dev.start()
        try:
            assert dev.wait_connected(10), dev.last_error
            pub = CloudMqtt(
                CloudMqttSettings(port=port, client_id="push-embedded"),
                clean_session=True,
                mqtt5=True,
            )
            t0 = time.monotonic()
            pub.start(timeout_s=10)
            try:
                assert not pub.mqtt5
                assert time.monotonic() - t0 < 8
                assert pub.publish(topic("robot-1", "updates"), _hint(2), wait_s=10, expiry_s=5)
            finally:
                pub.stop()
            assert got.wait(10)
        finally:
            dev.stop()
