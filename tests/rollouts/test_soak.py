"""The pure KPI soak gate: figures from the robots' counters, the judgement against
the not-yet-updated robots, the decision taken once and kept across a reload."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError
from cloud.rollouts.soak import (
    Figures,
    Readings,
    Sample,
    SoakPolicy,
    abort_due,
    check_abort_threshold,
    crossed,
    figures,
    judge,
    regressed,
    soak_gate,
    soak_text,
)

BUNDLE = {"name": "pendulum", "version": "1.1.0", "sequence": 2}


def R(samples: Mapping[str, Sequence[Sample]]) -> Readings:
    return Readings(samples)


def series(rate: float, interventions_per_min: float, n: int = 7, t0: float = 0.0):
    """Samples every 10 s at 50 Hz with the given miss rate and intervention rate."""
    return [
        Sample(
            at=t0 + 10 * i,
            ticks=500 * i,
            misses=round(500 * i * rate),
            interventions=round(interventions_per_min * i / 6),
        )
        for i in range(n)
    ]


def test_figures_are_counter_increases_and_a_reset_counts_from_zero() -> None:
    got = figures(["a", "b", "c"], R({"a": series(0.02, 6.0), "b": series(0.0, 0.0), "c": []}))
    assert (got.devices, got.reporting) == (3, 2)
    assert got.ticks == 6000 and got.misses == 60 and got.miss_rate == pytest.approx(0.01)
    assert got.minutes == pytest.approx(2.0) and got.interventions_per_min == pytest.approx(3.0)
    reset = [Sample(0, 100, 10, 0), Sample(10, 200, 20, 0), Sample(20, 50, 5, 0)]
    f = figures(["r"], R({"r": reset}))
    assert (f.ticks, f.misses) == (150, 15)  # +100, then a restart: +50 from zero
    empty = figures(["x"], R({}))
    assert empty.miss_rate == 0.0 and empty.interventions_per_min == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20))
def test_property_figures_never_go_negative_and_the_rate_is_at_most_one(pairs) -> None:
    pts = [Sample(float(i), t, min(m, t), 0) for i, (t, m) in enumerate(pairs)]
    f = figures(["r"], R({"r": pts}))
    assert f.ticks >= 0 and f.misses >= 0 and f.minutes >= 0
    assert f.interventions_per_min >= 0


def test_judge_compares_with_the_baseline_and_names_the_figures() -> None:
    policy = SoakPolicy(60, max_miss_rate_increase=0.01, max_interventions_increase=1.0)
    base = figures(["b"], R({"b": series(0.005, 1.0)}))
    ok, text = judge(figures(["w"], R({"w": series(0.01, 1.0)})), base, policy)
    assert ok and "wave: deadline-miss rate 0.0100" in text and "not yet updated:" in text
    ok, text = judge(figures(["w"], R({"w": series(0.05, 1.0)})), base, policy)
    assert not ok and text.startswith(
        "deadline-miss rate up +0.0450 > 0.01 against the robots not updated yet; wave: "
    )
    ok, text = judge(figures(["w"], R({"w": series(0.005, 4.0)})), base, policy)
    assert not ok and text.startswith("interventions/min up +3.00 > 1 against the robots")
    ok, text = judge(figures(["w"], R({})), base, policy)
    assert not ok and text.startswith("no telemetry from the wave's robots during the soak")


def test_the_policy_refuses_bad_thresholds_by_name() -> None:
    for kwargs, match in (
        ({"soak_s": -1.0}, "soak_s = -1.0"),
        ({"soak_s": float("inf")}, "soak_s = inf"),
        ({"max_miss_rate_increase": 2.0}, "a rate is at most 1"),
        ({"max_interventions_increase": float("nan")}, "max_interventions_increase"),
    ):
        with pytest.raises(SpecError, match=match):
            SoakPolicy(**kwargs)
    with pytest.raises(SpecError, match=r"gates\.soak"):
        SoakPolicy.from_dict({"soak_s": 1})
    assert SoakPolicy.from_dict(None) == SoakPolicy() and SoakPolicy().soak_s == 0


def make(soak_s: float = 60.0) -> Rollout:
    spec = RolloutSpec(
        BUNDLE,
        ("a", "b", "c", "d"),
        (0.5, 1.0),
        gates={"soak": SoakPolicy(soak_s).to_dict()},
    )
    r = Rollout.create("ro-1", spec, now=0.0, created_by="operator:alice")
    r.start(0.0)
    w = r.next_dispatch()
    assert w is not None
    r.dispatched(0, 0.0, {d: None for d in w.device_ids})
    for d in w.device_ids:
        r.observe(d, "COMMITTED", "", 1.0)
    r.evaluate(1.0)
    assert r.current == 1
    return r


def reload(r: Rollout) -> Rollout:
    spec, status = json.loads(json.dumps(r.spec.to_dict())), json.loads(json.dumps(r.to_status()))
    return Rollout.from_dicts(r.id, spec, status)


class Telemetry:
    """A measure function that counts its calls."""

    def __init__(self, by_device: Mapping[str, Sequence[Sample]]) -> None:
        self.by_device = by_device
        self.calls: list[tuple[list[str], float, float]] = []

    def __call__(self, ids: Sequence[str], start: float, end: float):
        self.calls.append((list(ids), start, end))
        return Readings(self.by_device)


def test_a_healthy_wave_soaks_then_the_next_goes_out_once_decided() -> None:
    good = Telemetry({d: series(0.01, 0.0, t0=2.0) for d in "abcd"})
    r = make()
    assert soak_gate(r, 0, 2.0, good)  # nothing soaks before the first wave
    assert not soak_gate(r, 1, 2.0, good)  # starts the soak
    assert soak_text(r, 0).startswith("soaking until ")
    r = reload(r)  # a plane restart mid-soak keeps the same window
    assert not soak_gate(r, 1, 61.0, good) and good.calls == []
    assert soak_gate(r, 1, 62.0, good)
    # one reading: from a soak's length before the wave's dispatch to the window's end
    assert good.calls == [(["a", "b", "c", "d"], -60.0, 62.0)]
    r = reload(r)
    assert soak_gate(r, 1, 63.0, good) and len(good.calls) == 1  # decided once
    assert soak_text(r, 0).startswith("soak passed: wave: deadline-miss rate 0.0100")
    st_ = r.gates["soak"]["0"]
    assert st_["wave"]["reporting"] == 2 and st_["baseline"]["devices"] == 2


def test_a_regression_pauses_and_a_resume_accepts_it() -> None:
    bad = Telemetry(
        {
            **{d: series(0.2, 0.0, t0=2.0) for d in "ab"},  # wave 0 on the new bundle
            **{d: series(0.0, 0.0, t0=2.0) for d in "cd"},  # not yet updated
        }
    )
    r = make()
    assert not soak_gate(r, 1, 2.0, bad)
    assert not soak_gate(r, 1, 62.0, bad)
    assert r.state == "paused"
    assert r.reason.startswith("wave 0 soak regressed: deadline-miss rate up +0.2000 > 0.01 ")
    r = reload(r)
    r.resume(70.0, "operator:bob")
    assert soak_gate(r, 1, 70.0, bad) and len(bad.calls) == 1
    assert r.gates["soak"]["0"]["verdict"] == "accepted"
    assert soak_text(r, 0).startswith("soak accepted: deadline-miss rate up")


def test_no_soak_is_no_gate() -> None:
    r = make(soak_s=0.0)
    assert soak_gate(r, 1, 2.0, Telemetry({})) and "soak" not in r.gates
    assert soak_text(r, 0) == ""


def test_figures_round_trip_as_json() -> None:
    f = Figures(2, 1, 100, 3, 4, 2.0)
    d = json.loads(json.dumps(f.to_dict()))
    assert d["miss_rate"] == pytest.approx(0.03) and d["interventions_per_min"] == 2.0


# ---------------------------------------------------------------------- abort threshold
def make_abort(
    threshold: float | None, n: int = 10, first: float = 0.5, min_robots: int | None = 1
) -> Rollout:
    gates: dict[str, object] = {"soak": SoakPolicy(60).to_dict()}
    if min_robots is not None:
        gates["abort_min_robots"] = min_robots
    if threshold is not None:
        gates["abort_threshold"] = threshold
    ids = tuple(f"r{i}" for i in range(n))
    r = Rollout.create(
        "ro-2", RolloutSpec(BUNDLE, ids, (first, 1.0), gates=gates), now=0.0, created_by="x"
    )
    r.start(0.0)
    r.dispatched(0, 0.0, {d: None for d in r.waves[0].device_ids})
    return r


def test_failed_and_soak_regressed_robots_count_once_against_the_threshold() -> None:
    r = make_abort(0.3)
    r.observe("r0", "FAILED", "VERIFY", 1.0)
    r.observe("r1", "COMMITTED", "", 1.0)
    assert abort_due(r) is None  # 1/5 dispatched
    r.gates["soak"] = {"0": {"verdict": "regressed", "regressed": ["r0", "r1"]}}
    got = abort_due(r)  # r0 failed and regressed: counted once; 2/5 = 0.4 > 0.3
    assert got is not None
    assert (got["failed"], got["regressed"], got["dispatched"]) == (["r0"], ["r1"], 5)
    assert got["fraction"] == pytest.approx(0.4) and got["threshold"] == 0.3
    assert got["text"] == (
        "2/5 dispatched robot(s) failed or regressed (1 failed, 1 regressed in a soak) = 0.40 "
        "> abort threshold 0.3"
    )
    assert abort_due(reload(r)) == got


def test_no_threshold_never_aborts_and_bad_ones_are_refused_by_name() -> None:
    r = make_abort(None)
    for d in r.waves[0].device_ids:
        r.observe(d, "FAILED", "VERIFY", 1.0)
    assert abort_due(r) is None
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(SpecError, match=r"abort_threshold = .*: expected a fraction"):
            check_abort_threshold(bad)
    assert check_abort_threshold(None) is None and check_abort_threshold(1) == 1.0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 200), st.floats(0, 1))
def test_property_crossed_is_strictly_past_the_fraction(dispatched, bad, threshold) -> None:
    bad = min(bad, dispatched)
    assert not crossed(dispatched, bad, 1.0)  # every robot bad is not past 100 %
    assert not crossed(0, 0, threshold)
    if crossed(dispatched, bad, threshold):  # monotonic in the bad robots
        assert bad / dispatched >= threshold
        assert crossed(dispatched, min(bad + 1, dispatched), threshold)
    elif bad < dispatched and dispatched:
        assert bad / dispatched <= threshold
    if dispatched:
        assert crossed(dispatched, dispatched, threshold) == (threshold < 1.0)
        assert crossed(dispatched, 0, threshold) is False


def test_the_threshold_is_taken_as_written() -> None:
    assert not crossed(10, 3, 0.3) and crossed(10, 4, 0.3)
    assert not crossed(3, 1, 0.34) and crossed(3, 1, 0.33)
    assert crossed(5, 1, 0.0) and not crossed(5, 0, 0.0)


def test_the_soak_decision_names_the_regressed_robots() -> None:
    bad = Telemetry(
        {
            "a": series(0.2, 0.0, t0=2.0),  # regressed on the new bundle
            "b": series(0.0, 0.0, t0=2.0),
            **{d: series(0.0, 0.0, t0=2.0) for d in "cd"},
        }
    )
    r = make()
    assert not soak_gate(r, 1, 2.0, bad) and not soak_gate(r, 1, 62.0, bad)
    assert r.gates["soak"]["0"]["regressed"] == ["a"]
    got = Readings(bad.by_device)
    assert regressed(["a", "b", "z"], got, figures(["c"], got), SoakPolicy()) == ["a"]
