"""Smoke test on the zero-set-up path: the control plane's embedded amqtt broker
(loopback, no TLS, MQTT 3.1.1) carries agent telemetry into ingest and hints back."""

from __future__ import annotations

import threading
from pathlib import Path

from cloud.ingest import Ingest, IngestSettings
from cloud.mqtt import CloudMqtt, CloudMqttSettings
from cloud.testing import running_plane
from fleet.mqtt import MqttSettings, MqttTransport, topic
from protos import telemetry_pb2
from tests.servers import wait_until


def test_telemetry_and_hints_flow_through_the_embedded_broker(tmp_path: Path) -> None:
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
        hints: list[bytes] = []
        got_hint = threading.Event()

        def on_hint(_t: str, payload: bytes) -> None:
            hints.append(payload)
            got_hint.set()

        dev.subscribe(topic("robot-1", "updates"), on_hint)
        dev.start()
        try:
            assert dev.wait_connected(10), dev.last_error
            batch = telemetry_pb2.TelemetryBatch(device_id="robot-1", sequence=1)
            batch.points.add(loop_p99_ms=1.5).at.GetCurrentTime()
            acked = threading.Event()
            assert dev.publish(topic("robot-1", "telemetry"), batch.SerializeToString(), acked.set)
            assert acked.wait(10)
            wait_until(lambda: ingest.counters["stored"] == 1, 10, "telemetry stored")
            assert plane.store.telemetry("robot-1")[0].loop_p99_ms == 1.5
            pub = CloudMqtt(CloudMqttSettings(port=port, client_id="push-embedded"))
            pub.start()
            hint = telemetry_pb2.UpdateHint(bundle_name="pendulum", sequence=2)
            assert pub.publish(topic("robot-1", "updates"), hint.SerializeToString(), wait_s=10)
            pub.stop()
            assert got_hint.wait(10)
            assert telemetry_pb2.UpdateHint.FromString(hints[0]).sequence == 2
        finally:
            dev.stop()
            ingest.stop()
