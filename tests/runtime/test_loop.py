"""The control loop against real ONNX sessions; the robot is a small recording adapter."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from runtime.adapters import AdapterTimeout
from runtime.adapters.udp import UdpAdapter
from runtime.loop import ControlLoop, LoadedPolicy, LoopError
from runtime.metrics import MetricsSnapshot
from runtime.session import PolicySession
from tests.runtime import _models
from tests.runtime.conftest import ACT, OBS, loaded, manifest
from tests.servers import wait_until


@dataclass
class Robot:
    """Records every action; can hand out a fixed observation, block, or time out."""

    obs: object = field(default_factory=lambda: np.asarray([1.0, 0.0, 0.0], np.float32))
    block_s: float = 0.0
    timeout: bool = False
    safe: bool = True
    writes: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def read_observation(self) -> np.ndarray:
        if self.block_s:
            time.sleep(self.block_s)
        if self.timeout:
            raise AdapterTimeout("no frame")
        return self.obs  # type: ignore[return-value]

    def write_action(self, action: np.ndarray) -> None:
        self.writes.append((time.perf_counter(), action.copy()))

    def is_safe_to_switch(self) -> bool:
        return self.safe

    def close(self) -> None:
        pass


class SlowPolicy:
    """A real session that can be told to hang (a driver stall, a GPU hiccup)."""

    def __init__(self, session: PolicySession, hang_s: float) -> None:
        self.session, self.hang_s = session, hang_s

    @property
    def provider(self) -> str:
        return self.session.provider

    def step(self, obs: np.ndarray) -> np.ndarray:
        time.sleep(self.hang_s)
        return self.session.step(obs)


TIMING = {"deadline_overrun", "watchdog"}  # a loaded 2-core machine may add these


def _only(snap: MetricsSnapshot, reason: str, n: int) -> bool:
    """`reason` counted exactly n times and nothing else but timing interventions."""
    return snap.interventions.get(reason) == n and set(snap.interventions) <= {reason} | TIMING


def test_loop_keeps_its_rate_without_drift() -> None:
    robot = Robot()
    loop = ControlLoop(robot, loaded(_models.mlp(), control={"rate_hz": 200, "deadline_ms": 5}))
    t0 = time.perf_counter()
    snap = loop.run(duration_s=0.5)
    elapsed = time.perf_counter() - t0
    # Absolute deadlines: tick count follows wall time, however long each tick took.
    # Slots from start to end: 0.5 s x 200 Hz, each either run or skipped (never a burst).
    assert snap.ticks + loop.counters.skipped == pytest.approx(100, abs=2)
    assert elapsed < 0.5 + 1.5  # and the loop did stop
    assert snap.latency_p50_ms > 0 and snap.rate_hz == 200


def test_nan_and_inf_from_the_policy_actuate_the_fallback() -> None:
    for bad in (np.nan, np.inf):
        robot = Robot()
        p = loaded(_models.constant(OBS, [bad]), control={"fallback": "safe", "safe_action": [0.3]})
        snap = ControlLoop(robot, p, watchdog=False).run(ticks=5)
        assert _only(snap, "action_nonfinite", 5)
        assert all(a[0] == pytest.approx(0.3) for _, a in robot.writes)


def test_exception_inside_the_session_actuates_the_fallback_and_the_loop_goes_on() -> None:
    robot = Robot(obs=np.asarray([0.9, 0.0, 0.0], np.float32))
    p = loaded(_models.fails_when_first_obs_above(OBS, ACT, 0.5), control={"fallback": "zero"})
    loop = ControlLoop(robot, p, watchdog=False)
    snap = loop.run(ticks=3)
    assert _only(snap, "policy_error", 3)
    robot.obs = np.asarray([0.1, 0.0, 0.0], np.float32)
    snap = loop.run(ticks=2)
    assert snap.ticks == 5 and _only(snap, "policy_error", 3)
    assert [float(a[0]) for _, a in robot.writes] == [0.0] * 5


@pytest.mark.parametrize(
    "obs",
    [np.zeros(5, np.float32), np.zeros(3, np.float64), np.asarray([np.nan, 0, 0], np.float32)],
    ids=["wrong-shape", "wrong-dtype", "nan"],
)
def test_bad_observation_never_reaches_the_policy(obs: np.ndarray) -> None:
    robot = Robot(obs=obs)
    p = loaded(_models.mlp(bias=1.0), control={"fallback": "zero"})
    snap = ControlLoop(robot, p, watchdog=False).run(ticks=3)
    obs_reasons = {k: n for k, n in snap.interventions.items() if k.startswith("obs_")}
    assert sum(obs_reasons.values()) == 3 and len(obs_reasons) == 1
    assert all(a[0] == 0.0 for _, a in robot.writes)


def test_policy_blocking_past_the_deadline_gets_the_watchdog_fallback() -> None:
    robot = Robot()
    ctl = {"rate_hz": 20, "deadline_ms": 20, "fallback": "zero"}
    base = loaded(_models.mlp(bias=1.0), control=ctl)
    slow = LoadedPolicy(base.manifest, SlowPolicy(base.session, hang_s=0.2))  # type: ignore[arg-type]
    snap = ControlLoop(robot, slow).run(ticks=2)
    assert snap.deadline_misses >= 2
    assert snap.interventions.get("deadline_overrun") == 2
    assert snap.interventions.get("watchdog", 0) >= 1
    # The watchdog wrote the fallback while the policy hung, long before it returned.
    first_write = robot.writes[0][1][0]
    assert first_write == 0.0


def test_adapter_blocking_past_the_deadline_is_covered_by_the_watchdog() -> None:
    robot = Robot(block_s=0.15)
    p = loaded(_models.mlp(), control={"rate_hz": 20, "deadline_ms": 20, "fallback": "zero"})
    snap = ControlLoop(robot, p).run(ticks=2)
    assert snap.interventions.get("watchdog", 0) >= 1
    assert snap.interventions.get("deadline_overrun") == 2


def test_adapter_time_out_is_counted_and_the_fallback_written() -> None:
    robot = Robot(timeout=True)
    p = loaded(_models.mlp(bias=1.0), control={"fallback": "zero"})
    snap = ControlLoop(robot, p, watchdog=False).run(ticks=4)
    assert _only(snap, "adapter_timeout", 4)
    assert len(robot.writes) == 4


def test_real_udp_adapter_time_out_inside_the_loop() -> None:
    udp = UdpAdapter(obs_dim=OBS, action_dim=ACT, timeout_ms=2)
    try:
        p = loaded(_models.mlp(), control={"rate_hz": 20, "deadline_ms": 40})
        snap = ControlLoop(udp, p, watchdog=False).run(ticks=3)
    finally:
        udp.close()
    assert _only(snap, "adapter_timeout", 3)


def test_hot_swap_happens_on_a_tick_boundary_without_a_missed_deadline() -> None:
    robot = Robot()
    ctl = {"rate_hz": 40, "deadline_ms": 25, "fallback": "hold"}  # slack for a busy machine
    old = loaded(_models.constant(OBS, [0.5]), control=ctl)
    new = loaded(_models.constant(OBS, [-0.5]), version="1.1.0", control=ctl)
    loop = ControlLoop(robot, old)
    loop.start()
    try:
        wait_until(lambda: loop.counters.ticks >= 10, 5, "10 ticks")
        loop.swap(new, timeout_s=5)
        at = loop.counters.ticks
        wait_until(lambda: loop.counters.ticks >= at + 10, 5, "10 more ticks")
    finally:
        loop.stop()
    actions = [float(a[0]) for _, a in robot.writes]
    while actions[0] == 0.0:  # the initial action, if the very first tick overran
        actions.pop(0)
    switch = actions.index(-0.5)
    # One clean cut (fallback "hold" keeps the pattern even if a tick overran).
    assert set(actions[:switch]) == {0.5} and set(actions[switch:]) == {-0.5}
    assert loop.policy is new and loop.swaps == 1
    # The tick that switched made its deadline (bench/runtime_step.py measures 100 swaps).
    assert loop.counters.swap_misses == 0


def test_swap_waits_for_the_robot_to_be_safe_to_switch() -> None:
    robot = Robot(safe=False)
    old = loaded(_models.constant(OBS, [0.5]), control={"rate_hz": 100, "deadline_ms": 10})
    new = loaded(_models.constant(OBS, [-0.5]), control={"rate_hz": 100, "deadline_ms": 10})
    loop = ControlLoop(robot, old)
    loop.start()
    try:
        with pytest.raises(LoopError, match="not safe to switch"):
            loop.swap(new, timeout_s=0.2)
        assert loop.policy is old
        robot.safe = True
        loop.swap(new, timeout_s=5)
        assert loop.policy is new
    finally:
        loop.stop()


def test_shadow_reports_divergence_nan_rate_and_violations_without_actuating() -> None:
    robot = Robot()
    ctl = {"rate_hz": 200, "deadline_ms": 5, "fallback": "hold"}
    active = loaded(_models.constant(OBS, [0.5]), control=ctl)
    same = loaded(_models.constant(OBS, [0.5]))
    far = loaded(_models.constant(OBS, [5.0]))  # clamped to 2.0: a violation, divergence 1.5
    nan = loaded(_models.constant(OBS, [np.nan]))
    loop = ControlLoop(robot, active)
    loop.start()
    try:
        wait_until(lambda: loop.counters.ticks >= 3, 5, "the loop to run")
        r_same = loop.shadow(same, 20)
        r_far = loop.shadow(far, 20)
        r_nan = loop.shadow(nan, 20)
    finally:
        loop.stop()
    assert r_same.ticks == 20 and r_same.envelope_violations == 0
    assert r_same.divergence_max == 0
    # 1.5 on every tick the active policy's own action was actuated (an overrun on a busy
    # machine actuates the fallback instead, which diverges by 2.0).
    assert r_far.divergence_mean == pytest.approx(1.5, abs=0.2) and r_far.envelope_violations == 20
    assert r_nan.nan_rate == 1.0 and r_nan.compared == 0
    assert r_same.latency_p99_ms > 0
    # Only the active policy actuated (0.0: the initial action if the first tick overran).
    assert {float(a[0]) for _, a in robot.writes} <= {0.0, 0.5}


def test_obs_normalisation_from_the_manifest_is_applied() -> None:
    robot = Robot(obs=np.asarray([1.0, 0.0, 2.0], np.float32))
    io = manifest().io.model_dump()
    io.update(obs_mean=[1.0, 0.0, 2.0], obs_std=[1.0, 1.0, 1.0])
    model = _models.mlp(bias=0.0)
    p = LoadedPolicy(manifest(io=io), PolicySession(model))
    ControlLoop(robot, p, watchdog=False).run(ticks=1)
    zero = PolicySession(model).step(np.zeros(3, np.float32))[0]
    assert robot.writes[0][1][0] == pytest.approx(zero)


class FlakyRobot(Robot):
    """A third-party adapter that raises its own exception types."""

    def read_observation(self) -> np.ndarray:
        raise ConnectionResetError("link down")

    def write_action(self, action: np.ndarray) -> None:
        super().write_action(action)
        raise OSError("bus error")


def test_adapter_raising_foreign_exceptions_does_not_kill_the_loop() -> None:
    robot = FlakyRobot()
    p = loaded(_models.mlp(bias=1.0), control={"fallback": "zero"})
    snap = ControlLoop(robot, p, watchdog=False).run(ticks=3)
    assert snap.ticks == 3
    assert snap.interventions["adapter_error"] == 6  # 3 failed reads + 3 failed writes
    assert [float(a[0]) for _, a in robot.writes] == [0.0] * 3


def test_shadow_applies_the_candidates_own_normalisation() -> None:
    robot = Robot(obs=np.asarray([1.0, 0.0, 2.0], np.float32))
    ctl = {"rate_hz": 100, "deadline_ms": 10, "fallback": "hold"}
    model = _models.mlp(bias=0.0)
    active = loaded(model, control=ctl)
    io = manifest().io.model_dump()
    io.update(obs_mean=[1.0, 0.0, 2.0], obs_std=[1.0, 1.0, 1.0])
    candidate = LoadedPolicy(manifest(io=io), PolicySession(model))
    loop = ControlLoop(robot, active)
    loop.start()
    try:
        wait_until(lambda: loop.counters.ticks >= 3, 5, "the loop to run")
        report = loop.shadow(candidate, 10)
    finally:
        loop.stop()
    raw_action = PolicySession(model).step(np.asarray([1.0, 0.0, 2.0], np.float32))[0]
    normalised_action = PolicySession(model).step(np.zeros(3, np.float32))[0]
    assert report.compared == 10
    assert report.divergence_max == pytest.approx(abs(raw_action - normalised_action), abs=1e-5)


def test_realtime_thread_sets_fifo_and_restores_the_previous_policy() -> None:
    import os
    import threading

    from runtime.loop import realtime_thread

    seen: dict[str, int] = {}

    def body() -> None:  # a fresh thread, so the test process keeps its own policy
        seen["before"] = os.sched_getscheduler(0)
        with realtime_thread(3):
            seen["inside"] = os.sched_getscheduler(0)
        seen["after"] = os.sched_getscheduler(0)
        with realtime_thread(None):
            seen["none"] = os.sched_getscheduler(0)

    t = threading.Thread(target=body)
    t.start()
    t.join(5)
    if seen["inside"] != os.SCHED_FIFO:
        pytest.skip("this machine does not allow SCHED_FIFO (no CAP_SYS_NICE)")
    assert seen["before"] == seen["after"] == seen["none"] == os.SCHED_OTHER
