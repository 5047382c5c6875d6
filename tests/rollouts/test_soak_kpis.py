"""The soak's other figures: loop latency p99 (a cap and a ratio), error events, shadow
divergence; the wave compared with its own robots on the previous bundle as well as
with the robots not updated yet; the abort threshold's minimum robot count."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError
from cloud.rollouts.readings import error_event, shadow_divergence
from cloud.rollouts.soak import (
    DEFAULT_ABORT_MIN_ROBOTS,
    MIN_BEFORE_TICKS,
    Figures,
    Readings,
    Sample,
    SoakPolicy,
    abort_due,
    abort_min_robots,
    check_abort_min_robots,
    crossed,
    figures,
    judge,
    regressed,
    soak_gate,
)
from cloud.store import EventRecord
from fleet.update_core import ShadowResult, ShadowThresholds, shadow_summary

BUNDLE = {"name": "pendulum", "version": "1.1.0", "sequence": 2}


def series(rate: float = 0.0, p99: float = 1.0, n: int = 7, t0: float = 0.0) -> list[Sample]:
    """Samples every 10 s at 50 Hz with the given miss rate and loop p99."""
    return [Sample(t0 + 10 * i, 500 * i, round(500 * i * rate), 0, p99) for i in range(n)]


def test_latency_p99_is_the_p99_of_the_reported_p99s_and_zero_is_none() -> None:
    pts = [Sample(float(i), 50 * i, 0, 0, float(i)) for i in range(1, 101)]
    f = figures(["r"], Readings({"r": pts}))
    assert f.latency_p99_ms == 99.0
    silent = figures(["r"], Readings({"r": series(p99=0.0)}))
    assert silent.latency_p99_ms == 0.0


def test_the_latency_cap_and_ratio_regress_a_wave() -> None:
    base = figures(["b"], Readings({"b": series(p99=2.0)}))
    ok, _ = judge(figures(["w"], Readings({"w": series(p99=2.9)})), base, SoakPolicy(60))
    assert ok  # 1.45x < 1.5x
    ok, text = judge(figures(["w"], Readings({"w": series(p99=3.2)})), base, SoakPolicy(60))
    assert not ok
    assert text.startswith(
        "loop latency p99 3.20 ms is 1.60x the robots not updated yet's 2.00 ms > 1.5x"
    )
    capped = SoakPolicy(60, max_latency_p99_ms=2.5)
    ok, text = judge(figures(["w"], Readings({"w": series(p99=2.9)})), base, capped)
    assert not ok and text.startswith("loop latency p99 2.90 ms > 2.5 ms; wave: ")
    # a baseline that reports no latency (an older runtime) compares nothing
    quiet = figures(["b"], Readings({"b": series(p99=0.0)}))
    assert judge(figures(["w"], Readings({"w": series(p99=9.0)})), quiet, SoakPolicy(60))[0]


def test_the_wave_is_compared_with_its_own_robots_before_the_update() -> None:
    policy = SoakPolicy(60)
    waiting = figures(["b"], Readings({"b": series(0.05)}))  # a bad site not updated yet
    wave = figures(["w"], Readings({"w": series(0.05)}))
    before = figures(["w"], Readings({"w": series(0.0, t0=-80)}))
    ok, text = judge(wave, waiting, policy, before)
    assert not ok
    assert text.startswith("deadline-miss rate up +0.0500 > 0.01 against the same robots before")
    assert "same robots before: deadline-miss rate 0.0000" in text
    # nothing reported before the update (robots just came online): not compared
    nothing = figures(["w"], Readings())
    assert judge(wave, waiting, policy, nothing)[0]
    # nor over too few ticks for a rate (999 ticks: one miss is 0.001)
    few = figures(["w"], Readings({"w": [Sample(0, 0, 0, 0), Sample(20, 999, 0, 0)]}))
    assert few.ticks == MIN_BEFORE_TICKS - 1 and judge(wave, waiting, policy, few)[0]
    enough = figures(["w"], Readings({"w": [Sample(0, 0, 0, 0), Sample(20, 1000, 0, 0)]}))
    assert not judge(wave, waiting, policy, enough)[0]


def test_error_events_per_robot_over_the_baselines() -> None:
    got = Readings({"a": series(), "b": series()}, errors={"a": [10.0, 20.0]})
    wave = figures(["a", "b"], got)
    assert wave.errors == 2 and wave.errors_per_robot == 1.0
    base = figures(["c"], Readings({"c": series()}))
    ok, text = judge(wave, base, SoakPolicy(60))
    assert not ok and text.startswith("error events/robot up +1.00 > 0 against the robots")
    assert judge(wave, base, SoakPolicy(60, max_errors_increase=1.0))[0]
    assert regressed(["a", "b"], got, base, SoakPolicy(60)) == ["a"]


def test_the_divergence_cap_applies_to_the_mean_of_each_robots_last_report() -> None:
    got = Readings(
        {"a": series(), "b": series()},
        shadow={"a": [(1.0, 0.9), (5.0, 0.1)], "b": [(2.0, 0.3)]},  # a's last: 0.1
    )
    wave = figures(["a", "b"], got)
    assert wave.divergence == pytest.approx(0.2)
    base = figures(["c"], Readings({"c": series()}))
    assert base.divergence is None
    assert judge(wave, base, SoakPolicy(60, max_divergence=0.25))[0]
    ok, text = judge(wave, base, SoakPolicy(60, max_divergence=0.15))
    assert not ok and text.startswith("shadow divergence 0.2 > 0.15; ")
    assert regressed(["a", "b"], got, base, SoakPolicy(60, max_divergence=0.15)) == ["b"]


def test_old_stored_policies_load_with_the_new_defaults_and_bad_ones_are_named() -> None:
    old = {"soak_s": 60, "max_miss_rate_increase": 0.01, "max_interventions_increase": 1.0}
    p = SoakPolicy.from_dict(old)
    assert (p.max_latency_ratio, p.max_errors_increase, p.max_latency_p99_ms) == (1.5, 0.0, None)
    assert SoakPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for kwargs, match in (
        ({"max_latency_ratio": 0.5}, "max_latency_ratio = 0.5: must be at least 1"),
        ({"max_latency_p99_ms": -1.0}, "max_latency_p99_ms = -1.0"),
        ({"max_divergence": float("nan")}, "max_divergence = nan"),
        ({"max_errors_increase": float("inf")}, "max_errors_increase = inf"),
    ):
        with pytest.raises(SpecError, match=match):
            SoakPolicy(**kwargs)  # type: ignore[arg-type]


def test_figures_round_trip_with_the_new_fields() -> None:
    f = Figures(2, 2, 100, 3, 4, 2.0, 1.5, 1, 0.25)
    back = Figures.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back == f and f.to_dict()["errors_per_robot"] == 0.5
    assert (
        Figures.from_dict(
            {
                "devices": 1,
                "reporting": 0,
                "ticks": 0,
                "misses": 0,
                "interventions": 0,
                "minutes": 0.0,
            }
        ).divergence
        is None
    )


class Telemetry:
    def __init__(self, got: Readings) -> None:
        self.got = got
        self.calls: list[tuple[list[str], float, float]] = []

    def __call__(self, ids, start, end) -> Readings:  # type: ignore[no-untyped-def]
        self.calls.append((list(ids), start, end))
        return self.got


def soaked_rollout() -> Rollout:
    spec = RolloutSpec(
        BUNDLE, ("a", "b", "c", "d"), (0.5, 1.0), gates={"soak": SoakPolicy(60).to_dict()}
    )
    r = Rollout.create("ro-k", spec, now=100.0, created_by="x")
    r.start(100.0)
    r.dispatched(0, 100.0, {"a": None, "b": None})
    for d in "ab":
        r.observe(d, "COMMITTED", "", 101.0)
    r.evaluate(102.0)
    return r


def test_one_reading_is_split_into_before_shadow_and_soak_windows() -> None:
    got = Readings(
        {
            # on the previous bundle before the dispatch (40..100): no misses; then 20 %
            **{d: [*series(0.0, t0=40.0), *series(0.2, t0=102.0)] for d in "ab"},
            **{d: series(0.2, t0=40.0, n=14) for d in "cd"},  # not updated: 20 % all along
        },
        errors={"a": [50.0]},  # before the update: not the wave's
        shadow={"a": [(99.0, 0.4)], "b": [(101.0, 0.2)], "c": [(50.0, 9.0)]},
    )
    tel = Telemetry(got)
    r = soaked_rollout()
    assert not soak_gate(r, 1, 102.0, tel)
    assert not soak_gate(r, 1, 162.0, tel)
    assert tel.calls == [(["a", "b", "c", "d"], 40.0, 162.0)]
    st_ = r.gates["soak"]["0"]
    assert st_["verdict"] == "regressed"
    assert st_["text"].startswith("deadline-miss rate up +0.2000 > 0.01 against the same robots")
    assert st_["wave"]["errors"] == 0 and st_["before"]["errors"] == 1
    assert st_["wave"]["divergence"] == pytest.approx(0.3)  # a (99 s: within clock skew), b
    assert st_["baseline"]["divergence"] is None  # c's is outside the wave's update
    assert st_["regressed"] == ["a", "b"]
    assert r.state == "paused"


@pytest.mark.parametrize("value", [0.1234, 1e-05, 0.0, 12.5])
def test_the_divergence_is_read_from_the_agents_own_shadow_summary(value: float) -> None:
    """Differential: the text the agent writes, parsed back by the plane."""
    result = ShadowResult(
        ticks=200, divergence_max=value, nan_rate=0.0, latency_p99_ms=0.4, envelope_violations=0
    )
    for limit in (None, 0.5):
        text = shadow_summary(result, ShadowThresholds(), limit)
        assert shadow_divergence(text) == pytest.approx(float(f"{value:.4g}"))
    assert shadow_divergence("max action divergence 0.9 > 0.25") is None
    assert shadow_divergence("shadow 10 ticks: max divergence nan (not enforced)") is None
    assert shadow_divergence("") is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_property_any_detail_parses_to_none_or_a_finite_divergence(text: str) -> None:
    got = shadow_divergence(text)
    assert got is None or (got >= 0 and got == got and got != float("inf"))


def test_error_events_are_those_with_a_failing_reason() -> None:
    at = dt.datetime.now(dt.UTC)
    for reason, is_error in (
        ("OK", False),
        ("", False),
        ("HINT_IGNORED", False),
        ("NOT_NEWER", False),
        ("DOWNLOAD_FAILED", True),
        ("HEALTH_CRASH", True),
    ):
        ev = EventRecord("r", 1, at, "update", "FAILED", reason, "")
        assert error_event(ev) is is_error


# ---------------------------------------------------------------------- min robots
def aborting(n: int, first: float, min_robots: int | None) -> Rollout:
    gates: dict[str, object] = {"abort_threshold": 0.2}
    if min_robots is not None:
        gates["abort_min_robots"] = min_robots
    ids = tuple(f"r{i:04d}" for i in range(n))
    r = Rollout.create(
        "ro-m", RolloutSpec(BUNDLE, ids, (first, 1.0), gates=gates), now=0.0, created_by="x"
    )
    r.start(0.0)
    r.dispatched(0, 0.0, {d: None for d in r.waves[0].device_ids})
    r.observe(r.waves[0].device_ids[0], "FAILED", "HEALTH_CRASH", 1.0)
    return r


def test_one_failure_in_a_two_robot_canary_does_not_abort_a_large_rollout() -> None:
    big = aborting(1000, 0.002, None)  # 2 robots dispatched, 1 failed: 50 % > 20 %
    assert len(big.waves[0].device_ids) == 2
    assert abort_min_robots(big) == DEFAULT_ABORT_MIN_ROBOTS
    assert abort_due(big) is None
    assert abort_due(aborting(1000, 0.002, 2)) is not None  # unless configured
    got = abort_due(aborting(1000, 0.002, 0))
    assert got is not None and got["min_robots"] == 0
    small = aborting(4, 0.5, None)  # a rollout smaller than the default: all of it
    assert abort_min_robots(small) == 4 and abort_due(small) is None
    small.waves[1].dispatched_at = 2.0
    assert abort_due(small) is not None  # 1/4 > 0.2 once all 4 were dispatched


def test_bad_minimum_robot_counts_are_refused_by_name() -> None:
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(SpecError, match=r"abort_min_robots = .*: expected a whole number"):
            check_abort_min_robots(bad)
    assert check_abort_min_robots(None) is None and check_abort_min_robots(0) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 100), st.integers(0, 100), st.integers(0, 120))
def test_property_below_the_minimum_never_crosses(dispatched, bad, min_robots) -> None:
    bad = min(bad, dispatched)
    if dispatched < min_robots:
        assert not crossed(dispatched, bad, 0.0, min_robots)
    else:
        assert crossed(dispatched, bad, 0.0, min_robots) == crossed(dispatched, bad, 0.0)
