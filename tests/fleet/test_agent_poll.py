"""A robot that missed its hint converges by polling its signed desired state, and a
desired (bundle, generation) that failed here is not retried until a new push.

The update effects are a recording simulator (the thing under test is the agent's
worker loop); the real effects run in test_agent_e2e.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleet.agent import Agent
from fleet.config import AgentConfig
from fleet.update import ShadowResult
from runtime.layout import RobotLayout
from tests.fleet.conftest import Pki
from tests.fleet.test_agent_telemetry import make_robot
from tests.fleet.test_update import SimRuntime
from tests.servers import Mosquitto, wait_until

pytestmark = pytest.mark.services


class PollingRuntime(SimRuntime):
    def __init__(self, generation: int = 1, **kw: object) -> None:
        super().__init__(committed_sequence=1, target_sequence=2, **kw)  # type: ignore[arg-type]
        self.generation = generation
        self.polls = 0
        self.refreshes = 0

    def desired_bundle(self, timeout_s: float) -> tuple[str, int, int]:
        self.polls += 1
        return "pendulum", 2, self.generation

    def refresh(self, bundle_name: str, timeout_s: float):  # type: ignore[no-untyped-def]
        self.refreshes += 1
        return super().refresh(bundle_name, timeout_s)


def _run(
    pki: Pki, broker: Mosquitto, tmp_path: Path, sim: PollingRuntime
) -> tuple[Agent, threading.Event, threading.Thread]:
    root = make_robot(tmp_path / "robot-1", pki, "robot-1", broker.port)
    config = AgentConfig.model_validate(
        {
            "device_id": "robot-1",
            "mqtt_port": broker.port,
            "desired_state_poll_s": 0.2,
            "hint_min_interval_s": 0.0,
        }
    )
    agent = Agent(RobotLayout.at(root), config, effects=lambda _a: sim)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, 1.0), daemon=True)
    thread.start()
    return agent, stop, thread


def test_agent_converges_from_desired_state_without_a_hint(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    sim = PollingRuntime()
    agent, stop, thread = _run(pki, broker, tmp_path, sim)
    try:
        wait_until(lambda: sim.committed_sequence == 2, 15, "commit through polling")
        polls = sim.polls
        wait_until(lambda: sim.polls >= polls + 3, 10, "more polls")
        assert sim.refreshes == 1  # once installed, polls see nothing newer
        assert agent.hints.counters["dropped.stale"] >= 1
    finally:
        stop.set()
        thread.join(15)


def test_a_failed_generation_is_not_retried_by_polling(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    unhealthy = ShadowResult(100, 0.0, 0.5, 0.5, 0)  # half its actions NaN
    sim = PollingRuntime(shadow_result=unhealthy)
    agent, stop, thread = _run(pki, broker, tmp_path, sim)
    try:
        wait_until(lambda: "shadow" in sim.calls, 15, "first attempt")
        wait_until(lambda: agent.hints.counters["dropped.failed_before"] >= 3, 10, "polls skipped")
        assert sim.refreshes == 1 and sim.committed_sequence == 1
        sim.generation = 2  # the operator pushes again
        sim.shadow_result = SimRuntime().shadow_result
        wait_until(lambda: sim.committed_sequence == 2, 15, "retry of the new generation")
    finally:
        stop.set()
        thread.join(15)
