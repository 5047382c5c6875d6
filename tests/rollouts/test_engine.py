"""The pure wave engine: planning, gates, pause/resume/abort, silent devices."""

from __future__ import annotations

import json

import pytest

from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError, TransitionError, plan_waves

BUNDLE = {"name": "pendulum", "version": "1.1.0", "sequence": 2}


def ids(n: int) -> list[str]:
    return [f"r{i:02d}" for i in range(n)]


def make(n: int = 10, fractions=(0.1, 0.5, 1.0), max_fail=0.0, window=60.0) -> Rollout:
    spec = RolloutSpec(BUNDLE, tuple(ids(n)), tuple(fractions), max_fail, window)
    r = Rollout.create("ro-1", spec, now=0.0, created_by="operator:alice")
    r.start(1.0)
    return r


def dispatch(r: Rollout, now: float) -> list[str]:
    w = r.next_dispatch()
    assert w is not None
    r.dispatched(w.index, now, {d: {"name": "pendulum", "version": "1.0.0"} for d in w.device_ids})
    return w.device_ids


def test_waves_are_cumulative_fractions_rounded_up_with_a_canary_first() -> None:
    assert [len(w) for w in plan_waves(ids(10), [0.1, 0.5, 1.0])] == [1, 4, 5]
    assert [len(w) for w in plan_waves(ids(3), [0.1, 0.5, 1.0])] == [1, 1, 1]
    assert [len(w) for w in plan_waves(ids(10), [0.3, 1.0])] == [3, 7]  # 0.3*10 is not 4
    # fractions that round to the same count do not make an empty wave
    assert [len(w) for w in plan_waves(ids(2), [0.1, 0.2, 1.0])] == [1, 1]
    waves = plan_waves(["b", "a", "a", "c"], [1.0])
    assert waves == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("fractions", "needle"),
    [
        ([0.5], "end at 1.0"),
        ([0.5, 0.2, 1.0], "increase"),
        ([0.0, 1.0], "(0, 1]"),
        ([1.5], "(0, 1]"),
    ],
)
def test_bad_wave_fractions_are_refused_naming_the_problem(fractions, needle) -> None:
    with pytest.raises(
        SpecError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        plan_waves(ids(4), fractions)


def test_spec_refuses_out_of_range_thresholds_and_no_devices() -> None:
    with pytest.raises(SpecError, match="max_failure_fraction"):
        RolloutSpec(BUNDLE, ("a",), (1.0,), 1.5, 60)
    with pytest.raises(SpecError, match="health_window_s"):
        RolloutSpec(BUNDLE, ("a",), (1.0,), 0.0, 0)
    with pytest.raises(SpecError, match="no devices"):
        RolloutSpec(BUNDLE, (), (1.0,), 0.0, 60)


def test_a_wave_advances_only_when_every_device_committed() -> None:
    r = make()
    assert r.state == "running"
    first = dispatch(r, 2.0)
    assert r.next_dispatch() is None
    r.evaluate(3.0)
    assert r.current == 0  # nothing reported yet
    r.observe(first[0], "COMMITTED", "", 4.0)
    r.evaluate(4.0)
    assert r.current == 1 and r.waves[0].state == "succeeded"
    second = dispatch(r, 5.0)
    for d in second[:-1]:
        r.observe(d, "COMMITTED", "", 6.0)
    r.evaluate(6.0)
    assert r.current == 1 and r.waves[1].state == "running"
    r.observe(second[-1], "COMMITTED", "", 7.0)
    r.evaluate(7.0)
    third = dispatch(r, 8.0)
    for d in third:
        r.observe(d, "COMMITTED", "", 9.0)
    r.evaluate(9.0)
    assert r.state == "completed"
    assert [h["to"] for h in r.history if h["from"] != h["to"]] == [
        "pending",
        "running",
        "completed",
    ]


def test_failures_over_the_threshold_pause_at_once_with_the_reason() -> None:
    r = make(n=10, fractions=(0.5, 1.0), max_fail=0.2)
    wave = dispatch(r, 2.0)
    r.observe(wave[0], "FAILED", "SIGNATURE_INVALID", 3.0)
    r.evaluate(3.0)
    assert r.state == "running"  # 1/5 = 0.2 is allowed
    r.observe(wave[1], "ROLLED_BACK", "health_window", 4.0)
    r.evaluate(4.0)
    assert r.state == "paused"  # 2/5 > 0.2, even with 3 devices still updating
    assert "wave 0: 2/5 devices failed (failed 1, rolled_back 1)" in r.reason
    assert r.next_dispatch() is None


def test_failures_within_the_threshold_still_advance() -> None:
    r = make(n=4, fractions=(0.5, 1.0), max_fail=0.5)
    a, b = dispatch(r, 2.0)
    r.observe(a, "FAILED", "x", 3.0)
    r.observe(b, "COMMITTED", "", 3.0)
    r.evaluate(3.0)
    assert r.state == "running" and r.current == 1


def test_resume_after_a_failed_gate_sends_the_next_wave() -> None:
    r = make(n=4, fractions=(0.5, 1.0))
    a, _b = dispatch(r, 2.0)
    r.observe(a, "FAILED", "x", 3.0)
    r.evaluate(3.0)
    assert r.state == "paused"
    with pytest.raises(TransitionError):
        r.pause(3.5, "again")
    r.resume(4.0, "operator:alice")
    assert r.state == "running" and r.waves[0].state == "overridden"
    assert r.next_dispatch() is r.waves[1]
    assert "resumed by operator:alice" in r.history[-2]["reason"]


def test_a_manual_pause_holds_the_next_wave_until_resume() -> None:
    r = make(n=4, fractions=(0.5, 1.0))
    a, b = dispatch(r, 2.0)
    r.pause(2.5, "paused by operator:bob")
    r.observe(a, "COMMITTED", "", 3.0)
    r.observe(b, "COMMITTED", "", 3.0)
    r.evaluate(3.0)
    assert r.state == "paused" and r.next_dispatch() is None
    r.resume(4.0, "operator:bob")
    r.evaluate(4.0)
    assert r.next_dispatch() is r.waves[1]


def test_a_silent_device_fails_at_the_deadline() -> None:
    r = make(n=2, fractions=(1.0,), window=30.0)
    a, b = dispatch(r, 10.0)
    r.observe(a, "COMMITTED", "", 11.0)
    r.evaluate(39.9)
    assert r.state == "running"
    r.evaluate(40.0)
    assert r.state == "paused"
    assert r.waves[0].outcomes[b]["outcome"] == "SILENT"
    assert "silent 1" in r.reason


def test_abort_cancels_later_waves_and_returns_what_to_restore() -> None:
    r = make(n=10, fractions=(0.2, 1.0))
    first = dispatch(r, 2.0)
    restore = r.abort(3.0, "operator:alice", rollback=True)
    assert r.state == "aborted" and r.waves[1].state == "cancelled"
    assert set(restore) == set(first)
    assert restore[first[0]] == {"name": "pendulum", "version": "1.0.0"}
    assert r.next_dispatch() is None
    with pytest.raises(TransitionError, match="already aborted"):
        r.abort(4.0, "operator:alice", rollback=False)
    r2 = make()
    dispatch(r2, 2.0)
    assert r2.abort(3.0, "x", rollback=False) == {}


def test_first_outcome_wins_and_unknown_devices_are_ignored() -> None:
    r = make(n=2, fractions=(1.0,))
    a, _ = dispatch(r, 2.0)
    assert r.observe(a, "FAILED", "x", 3.0)
    assert not r.observe(a, "COMMITTED", "", 4.0)
    assert not r.observe("stranger", "COMMITTED", "", 4.0)


def test_a_rollout_round_trips_through_json() -> None:
    r = make()
    dispatch(r, 2.0)
    r.observe("r00", "COMMITTED", "", 3.0)
    status = json.loads(json.dumps(r.to_status()))
    spec = json.loads(json.dumps(r.spec.to_dict()))
    back = Rollout.from_dicts(r.id, spec, status)
    assert back.to_status() == r.to_status() and back.spec == r.spec
