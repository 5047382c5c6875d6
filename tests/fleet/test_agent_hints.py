"""A running agent (real Mosquitto, mTLS, ACLs) facing forged, replayed, garbage,
oversized and flooding update hints: at most one refresh, no install, nothing crashes.

The update effects are a recording simulator (the thing under test is the agent's
hint path); the real effects run in test_agent_e2e.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleet.agent import Agent
from fleet.config import AgentConfig
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from fleet.update import Reason, UpdateError
from protos import telemetry_pb2
from runtime.layout import RobotLayout
from tests.fleet.conftest import PUBLISHER, Pki
from tests.fleet.test_agent_telemetry import make_robot
from tests.fleet.test_update import SimRuntime
from tests.servers import Mosquitto, wait_until

pytestmark = pytest.mark.services


class CountingRuntime(SimRuntime):
    """Refresh finds nothing newer than what is installed (an unknown/old hint)."""

    def __init__(self) -> None:
        super().__init__(committed_sequence=5, target_sequence=5)
        self.refreshes = 0

    def refresh(self, bundle_name: str, timeout_s: float):  # type: ignore[no-untyped-def]
        self.refreshes += 1
        if bundle_name != "pendulum":
            raise UpdateError(Reason.TARGET_UNKNOWN, f"TUF has no target for {bundle_name}")
        return super().refresh(bundle_name, timeout_s)


def test_forged_replayed_garbage_and_flooding_hints_cost_at_most_one_refresh(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    root = make_robot(tmp_path / "robot-1", pki, "robot-1", broker.port, hint_min_interval_s=60.0)
    layout = RobotLayout.at(root)
    config = AgentConfig.model_validate(
        {
            "device_id": "robot-1",
            "mqtt_port": broker.port,
            "hint_min_interval_s": 60.0,
            "max_payload_bytes": 4096,
            "reconnect_base_s": 0.05,
        }
    )
    sim = CountingRuntime()
    agent = Agent(layout, config, effects=lambda _a: sim)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop, 1.0), daemon=True)
    runner.start()
    ca, crt, key = pki.identity(PUBLISHER)
    plane = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key)), PUBLISHER)
    plane.start()
    try:
        assert plane.wait_connected(10)
        wait_until(agent.transport.is_connected, 10, "agent connected")
        t = topic("robot-1", "updates")

        def hint(name: str, seq: int) -> bytes:
            return telemetry_pb2.UpdateHint(bundle_name=name, sequence=seq).SerializeToString()

        acked = threading.Event()
        plane.publish(t, b"\xff\x00 not a protobuf")
        plane.publish(t, hint("pendulum", 5)[:-1])  # truncated
        plane.publish(t, b"x" * 10_000)  # oversized
        plane.publish(t, hint("pendulum", 3))  # replay of an old version
        plane.publish(t, hint("never-published", 9))  # unknown bundle: one refresh
        for seq in range(10, 210):  # a flood
            plane.publish(t, hint("never-published", seq))
        plane.publish(t, hint("pendulum", 4), on_ack=acked.set)
        assert acked.wait(10)
        wait_until(lambda: agent.hints.counters["received"] >= 204, 15, "all hints at the agent")
        wait_until(lambda: sim.refreshes >= 1, 10, "the one refresh")
        c = agent.hints.counters
        assert c["dropped.malformed"] == 2 and c["dropped.stale"] == 2  # garbage, truncated
        assert agent.transport.counters["dropped_oversize"] == 1
        assert sim.refreshes == 1  # everything else is rate-limited
        assert "stage" not in sim.calls and sim.committed_sequence == 5
        assert runner.is_alive()
    finally:
        plane.stop()
        stop.set()
        runner.join(15)


class RejectingRuntime(SimRuntime):
    """The plane's signed desired state wants pendulum 6 (generation 1); the shadow run
    rejects it. Every refresh is counted: one means one attempt."""

    def __init__(self) -> None:
        super().__init__(
            committed_sequence=5,
            target_sequence=6,
            fail={"shadow": UpdateError(Reason.SHADOW_FAILED, "rejected in shadow")},
        )
        self.refreshes = 0
        self.signed = ("pendulum", 6, 1)

    def refresh(self, bundle_name: str, timeout_s: float):  # type: ignore[no-untyped-def]
        self.refreshes += 1
        return super().refresh(bundle_name, timeout_s)

    def desired_bundle(self, timeout_s: float) -> tuple[str, int, int]:
        return self.signed


def test_forged_hints_cannot_make_a_robot_retry_a_rejected_bundle(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    """The retry decision is keyed on the signed desired state: hints with new sequence
    or generation numbers change nothing; a new signed generation retries once."""
    root = make_robot(tmp_path / "robot-1", pki, "robot-1", broker.port, hint_min_interval_s=0.0)
    config = AgentConfig.model_validate(
        {
            "device_id": "robot-1",
            "mqtt_port": broker.port,
            "hint_min_interval_s": 0.0,
            "desired_state_poll_s": 0.0,
            "reconnect_base_s": 0.05,
        }
    )
    sim = RejectingRuntime()
    agent = Agent(RobotLayout.at(root), config, effects=lambda _a: sim)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop, 1.0), daemon=True)
    runner.start()
    ca, crt, key = pki.identity(PUBLISHER)
    plane = MqttTransport(MqttSettings(port=broker.port, tls=TlsFiles(ca, crt, key)), PUBLISHER)
    plane.start()
    try:
        assert plane.wait_connected(10)
        wait_until(agent.transport.is_connected, 10, "agent connected")
        t = topic("robot-1", "updates")

        def hint(seq: int, gen: int) -> bytes:
            msg = telemetry_pb2.UpdateHint(bundle_name="pendulum", sequence=seq, generation=gen)
            return msg.SerializeToString()

        plane.publish(t, hint(6, 1))
        wait_until(lambda: "shadow" in sim.calls, 10, "the first attempt reached shadow")
        wait_until(lambda: agent._update_state.load().state.value == "FAILED", 10, "failed")
        for seq, gen in ((6, 2), (7, 1), (6, 99), (8, 1000)):  # forged numbers
            acked = threading.Event()
            plane.publish(t, hint(seq, gen), on_ack=acked.set)
            assert acked.wait(10)
        # The gate keeps only the newest pending hint: at least one reaches the check.
        wait_until(lambda: agent.hints.counters["received"] >= 5, 10, "all hints at the agent")
        wait_until(
            lambda: (
                agent.hints.counters["dropped.failed_before"] >= 1 and agent.hints._pending is None
            ),
            10,
            "the forged hints refused",
        )
        assert sim.refreshes == 1 and sim.calls.count("shadow") == 1
        sim.signed = ("pendulum", 6, 2)  # the operator pushes again: a new signed generation
        plane.publish(t, hint(6, 1))
        wait_until(lambda: sim.refreshes == 2, 10, "one retry for the new generation")
    finally:
        plane.stop()
        stop.set()
        runner.join(15)
