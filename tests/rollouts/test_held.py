"""Held devices in the pure engine: a device whose switch the robot holds (an update
lock, a closed maintenance window) is waited for, not failed; its health window starts
again when it is released; past ``max_held_s`` it is skipped, no failure; the failure
fraction, the abort threshold and the soak leave it out."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.rollouts.engine import (
    DEFAULT_MAX_HELD_S,
    Rollout,
    RolloutError,
    RolloutSpec,
    SpecError,
)
from cloud.rollouts.soak import Readings, Sample, SoakPolicy, abort_due, soak_gate

BUNDLE = {"name": "pendulum", "version": "1.1.0", "sequence": 2}
LOCK = ("UPDATE_LOCKED", "locked by nav: mid-task")
WINDOW = ("OUTSIDE_WINDOW", "outside maintenance window east; next opening 2026-12-08T02:00Z")
HW = 60.0


def make(
    n: int = 4, fractions: Sequence[float] = (0.5, 1.0), max_fail: float = 0.0, **gates: object
) -> Rollout:
    ids = tuple(f"r{i}" for i in range(n))
    spec = RolloutSpec(BUNDLE, ids, tuple(fractions), max_fail, HW, gates=dict(gates))
    r = Rollout.create("ro-1", spec, now=0.0, created_by="operator:alice")
    r.start(0.0)
    r.dispatched(0, 0.0, {d: None for d in r.waves[0].device_ids})
    return r


def reload(r: Rollout) -> Rollout:
    spec, status = json.loads(json.dumps(r.spec.to_dict())), json.loads(json.dumps(r.to_status()))
    return Rollout.from_dicts(r.id, spec, status)


def test_a_held_device_is_waited_for_past_the_health_window_not_silent() -> None:
    r = make()
    r.observe("r0", "COMMITTED", "", 5.0)
    assert r.hold("r1", *LOCK, since=3.0, now=5.0)
    r.evaluate(HW + 100)
    assert r.state == "running" and r.current == 0
    assert "r1" not in r.waves[0].outcomes and r.waves[0].failures == 0
    assert r.waves[0].held["r1"] == {"reason": LOCK[0], "detail": LOCK[1], "since": 3.0, "at": 5.0}
    r = reload(r)  # a plane restart keeps the hold and when it began
    assert r.waves[0].held["r1"]["since"] == 3.0
    r.evaluate(HW + 200)
    assert r.state == "running" and r.current == 0


def test_a_released_device_gets_its_own_health_window_then_is_silent() -> None:
    r = make()
    r.observe("r0", "COMMITTED", "", 5.0)
    r.hold("r1", *LOCK, since=3.0, now=5.0)
    assert r.release("r1", 500.0) and not r.release("r1", 501.0)
    r.evaluate(500.0 + HW - 1)
    assert r.state == "running" and "r1" not in r.waves[0].outcomes
    r.evaluate(500.0 + HW)
    assert r.waves[0].outcomes["r1"]["outcome"] == "SILENT"
    assert r.state == "paused"


def test_a_released_device_that_commits_lets_the_wave_go_on() -> None:
    r = make()
    r.observe("r0", "COMMITTED", "", 5.0)
    r.hold("r1", *WINDOW, since=3.0, now=5.0)
    r.evaluate(1000.0)
    r.release("r1", 1000.0)
    assert r.observe("r1", "COMMITTED", "", 1010.0)
    r.evaluate(1010.0)
    assert r.current == 1 and r.waves[0].state == "succeeded" and not r.waves[0].held


def test_a_change_of_reason_or_detail_keeps_when_the_hold_began() -> None:
    r = make()
    assert r.hold("r1", *LOCK, since=3.0, now=5.0)
    assert not r.hold("r1", *LOCK, since=9.0, now=9.0)  # the same hold seen again
    assert r.hold("r1", *WINDOW, since=20.0, now=20.0)
    h = r.waves[0].held["r1"]
    assert (h["reason"], h["since"], h["at"]) == (WINDOW[0], 3.0, 20.0)
    notes = [x["reason"] for x in r.history if "held in wave" in x["reason"]]
    assert notes == [f"r1 held in wave 0 ({LOCK[0]}: {LOCK[1]})"]


def test_held_longer_than_max_held_is_skipped_not_failed_and_the_wave_goes_on() -> None:
    r = make(max_held_s=300.0)
    r.observe("r0", "COMMITTED", "", 5.0)
    r.hold("r1", *LOCK, since=10.0, now=10.0)
    r.evaluate(309.0)
    assert "r1" in r.waves[0].held and r.current == 0
    r.evaluate(310.0)
    w = r.waves[0]
    assert w.state == "succeeded" and r.current == 1 and r.state == "running"
    assert w.failures == 0 and "r1" not in w.outcomes and not w.held
    assert w.skipped["r1"]["held"] is True
    assert w.skipped["r1"]["reason"] == (
        f"held ({LOCK[0]}: {LOCK[1]}) for more than 300 s (max_held); it updates when released"
    )
    assert w.held_skipped == ["r1"]
    assert r.history[-1]["reason"] == "wave 0 succeeded (1/1 committed, 1 skipped while held)"
    # a skipped device is not held again, nor observed as a late outcome of the wave
    assert not r.hold("r1", *LOCK, since=311.0, now=311.0)


def test_the_default_bound_is_a_day_and_a_bad_one_is_refused_by_name() -> None:
    assert make().spec.max_held_s == DEFAULT_MAX_HELD_S == 86400.0
    for bad in (0, -5, float("nan"), "1h", True):
        with pytest.raises(SpecError, match="max_held_s"):
            RolloutSpec(BUNDLE, ("a",), gates={"max_held_s": bad})
    with pytest.raises(RolloutError, match="hold reason 'SHADOW_DIVERGENCE'"):
        make().hold("r1", "SHADOW_DIVERGENCE", "", since=1.0, now=1.0)


def test_a_held_device_that_fails_counts_as_its_failure_once() -> None:
    r = make(max_fail=0.0)
    r.hold("r1", *LOCK, since=1.0, now=1.0)
    r.observe("r1", "FAILED", "UPDATE_LOCKED", 2.0, detail="held for more than 1296000 s")
    assert not r.waves[0].held
    r.evaluate(3.0)
    assert r.state == "paused"


def test_a_held_skip_leaves_the_failure_fraction_count() -> None:
    # 4 devices, 25% may fail: 1 failure of 4 passes; with 1 skipped while held it is 1 of 3
    r = make(n=4, fractions=(1.0,), max_fail=0.25, max_held_s=100.0)
    r.observe("r0", "FAILED", "VERIFY", 1.0)
    r.observe("r1", "COMMITTED", "", 1.0)
    r.observe("r2", "COMMITTED", "", 1.0)
    r.hold("r3", *LOCK, since=1.0, now=1.0)
    r.evaluate(50.0)
    assert r.state == "running"  # still held: counts as a device yet to report
    r.evaluate(101.0)
    assert r.state == "paused" and "1/3 devices failed" in r.reason


def test_held_devices_do_not_count_toward_the_abort_threshold() -> None:
    r = make(n=4, fractions=(1.0,), max_fail=1.0, abort_threshold=0.3, abort_min_robots=1)
    r.observe("r0", "FAILED", "VERIFY", 1.0)
    for d in ("r1", "r2", "r3"):
        r.hold(d, *LOCK, since=1.0, now=1.0)
    r.evaluate(HW * 10)
    assert abort_due(r) is None  # 1 bad of 4 dispatched, 3 held: none of them failed
    r.observe("r1", "COMMITTED", "", 2.0)
    r2 = make(n=4, fractions=(1.0,), max_fail=1.0, abort_threshold=0.3, abort_min_robots=1)
    r2.gates = r.gates
    r2.waves[0].outcomes = dict(r.waves[0].outcomes)
    r2.waves[0].skipped = {d: {"at": 9.0, "held": True, "reason": "x"} for d in ("r2", "r3")}
    got = abort_due(r2)  # 1 bad of the 2 that did not stay held = 0.5 > 0.3
    assert got is not None and got["dispatched"] == 2 and got["failed"] == ["r0"]


def _series(rate: float, t0: float) -> list[Sample]:
    return [Sample(t0 + i, 100 * (i + 1), int(rate * 100 * (i + 1)), 0) for i in range(60)]


def test_the_soak_leaves_a_device_skipped_while_held_out_of_the_wave() -> None:
    r = make(n=4, fractions=(0.75, 1.0), max_held_s=5.0, soak=SoakPolicy(30.0).to_dict())
    r.observe("r0", "COMMITTED", "", 1.0)
    r.observe("r1", "COMMITTED", "", 1.0)
    r.hold("r2", *LOCK, since=1.0, now=1.0)
    r.evaluate(10.0)
    assert r.current == 1 and r.waves[0].held_skipped == ["r2"]
    calls: list[list[str]] = []

    def measure(ids: Sequence[str], start: float, end: float) -> Readings:
        calls.append(list(ids))
        # the held robot still runs the old bundle, with a miss rate the wave's never had
        return Readings(
            {
                "r0": _series(0.0, 10),
                "r1": _series(0.0, 10),
                "r2": _series(0.5, 10),
                "r3": _series(0.0, 10),
            }
        )

    assert not soak_gate(r, 1, 10.0, measure)
    assert soak_gate(r, 1, 41.0, measure)
    assert calls == [["r0", "r1", "r3"]]
    assert r.gates["soak"]["0"]["wave"]["devices"] == 2


@settings(max_examples=60, deadline=None)
@given(
    held=st.lists(st.booleans(), min_size=1, max_size=8),
    at=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_property_a_held_device_never_becomes_a_failure(held: list[bool], at: float) -> None:
    r = make(n=len(held), fractions=(1.0,), max_held_s=1e5)
    for i, h in enumerate(held):
        if h:
            r.hold(f"r{i}", *LOCK, since=0.0, now=0.0)
    r.evaluate(at)
    r.evaluate(at)
    w = r.waves[0]
    for i, h in enumerate(held):
        if h:
            assert f"r{i}" not in w.outcomes
            assert (f"r{i}" in w.skipped) == (at >= 1e5)
    assert w.failures == (0 if at < HW else sum(1 for h in held if not h))
