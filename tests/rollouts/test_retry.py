"""The pure per-device retry: backoff with jitter, bounded tries, apart from the wave's
failure threshold."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.rollouts import retry
from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError
from cloud.rollouts.retry import RetryPolicy

BUNDLE = {"name": "pendulum", "version": "1.1.0", "sequence": 2}
WINDOW = 60.0


def make(max_tries: int = 3, n: int = 2, base: float = 10.0, cap: float = 100.0) -> Rollout:
    spec = RolloutSpec(
        BUNDLE,
        tuple(f"r{i}" for i in range(n)),
        (1.0,),
        0.0,
        WINDOW,
        gates={"retry": RetryPolicy(max_tries, base, cap).to_dict()},
    )
    r = Rollout.create("ro-1", spec, now=0.0, created_by="operator:alice")
    r.start(0.0)
    w = r.next_dispatch()
    assert w is not None
    r.dispatched(w.index, 0.0, {d: None for d in w.device_ids})
    return r


def reload(r: Rollout) -> Rollout:
    spec, status = json.loads(json.dumps(r.spec.to_dict())), json.loads(json.dumps(r.to_status()))
    return Rollout.from_dicts(r.id, spec, status)


def report(r: Rollout, device: str, outcome: str, reason: str, now: float, u: float = 0.5):
    """What the driver does with a device's outcome: retry it, or record it."""
    if outcome == "COMMITTED" or not retry.on_failure(r, device, outcome, reason, "", now, u):
        r.observe(device, outcome, reason, now)
    r.evaluate(now)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20),
    st.floats(5.0, 1000.0),
    st.floats(1.0, 50.0),
    st.integers(1, 80),
    st.floats(0.0, 1.0, exclude_max=True),
)
def test_property_the_delay_doubles_up_to_the_cap_with_half_of_it_jitter(
    tries, base, cap_ratio, failed, u
) -> None:
    p = RetryPolicy(tries, base, base * cap_ratio)
    full = min(p.max_s, base * 2 ** (failed - 1))
    d = p.delay(failed, u)
    assert full / 2 - 1e-9 <= d <= full + 1e-9
    assert p.delay(failed, 0.0) <= p.delay(failed + 1, 0.0)  # never shrinks
    assert d <= p.max_s + 1e-9


def test_the_policy_refuses_bad_values_by_name() -> None:
    for kwargs, match in (
        ({"max_tries": 0}, "max_tries = 0"),
        ({"max_tries": 21}, "max_tries = 21"),
        ({"max_tries": True}, "whole number"),
        ({"base_s": 1.0}, "at least 5 s"),
        ({"base_s": float("nan")}, "retry_base_s"),
        ({"base_s": 50.0, "max_s": 10.0}, "retry_max_s = 10.0"),
    ):
        with pytest.raises(SpecError, match=match):
            RetryPolicy(**kwargs)
    with pytest.raises(ValueError, match=r"u = 1\.0"):
        RetryPolicy().delay(1, 1.0)
    with pytest.raises(SpecError, match=r"gates\.retry"):
        RetryPolicy.from_dict({"max_tries": "x", "base_s": 5, "max_s": 5})
    assert RetryPolicy.from_dict(None) == RetryPolicy() and RetryPolicy().max_tries == 1


def test_a_transient_failure_is_retried_and_not_counted_against_the_wave() -> None:
    r = make(max_tries=3)
    report(r, "r0", "FAILED", "DOWNLOAD_FAILED", 1.0, u=0.0)
    assert r.state == "running" and r.waves[0].outcomes == {}
    assert retry.scheduled(r, "r0") and retry.due(r, 5.9) == []
    assert retry.due(r, 6.0) == ["r0"]  # base 10 s, jitter 0: half of it
    assert r.waves[0].deadline == pytest.approx(6.0 + WINDOW)
    r = reload(r)  # a plane restart while the retry waits
    retry.redispatched(r, ["r0"], 7.0)
    assert not retry.scheduled(r, "r0") and retry.tries(r, "r0") == 2
    assert retry.since(r, "r0", 0.0) == 7.0 and retry.since(r, "r1", 0.0) == 0.0
    assert r.waves[0].deadline == pytest.approx(7.0 + WINDOW)
    report(r, "r0", "ROLLED_BACK", "AGENT_RESTARTED", 8.0, u=0.999)
    assert retry.due(r, 8.0 + 10.0) == [] and retry.due(r, 8.0 + 20.0) == ["r0"]  # 20 s
    retry.redispatched(r, ["r0"], 30.0)
    report(r, "r0", "COMMITTED", "", 31.0)
    report(r, "r1", "COMMITTED", "", 31.0)
    assert r.state == "completed" and r.waves[0].failures == 0
    notes = [h["reason"] for h in r.history if "try" in h["reason"]]
    assert notes[0] == "wave 0: r0 FAILED DOWNLOAD_FAILED on try 1/3; try 2 in 5 s"


def test_tries_are_bounded_then_the_failure_counts() -> None:
    r = make(max_tries=2)
    report(r, "r0", "FAILED", "UNSAFE_TO_SWITCH", 1.0)
    retry.redispatched(r, retry.due(r, 100.0), 100.0)
    report(r, "r0", "FAILED", "UNSAFE_TO_SWITCH", 101.0)
    assert r.waves[0].outcomes["r0"]["outcome"] == "FAILED"
    assert r.state == "paused" and "1/2 devices failed" in r.reason


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [("FAILED", "SHADOW_DIVERGENCE"), ("ROLLED_BACK", "HEALTH_WINDOW_FAILED"), ("SILENT", "")],
)
def test_a_failure_of_the_bundle_itself_is_not_retried(outcome: str, reason: str) -> None:
    r = make(max_tries=5)
    assert not retry.on_failure(r, "r0", outcome, reason, "", 1.0, 0.5)
    assert not retry.scheduled(r, "r0")


def test_no_retry_without_tries_or_while_paused_or_for_a_device_outside_the_waves() -> None:
    r = make(max_tries=1)
    assert not retry.on_failure(r, "r0", "FAILED", "DOWNLOAD_FAILED", "", 1.0, 0.5)
    r = make(max_tries=3)
    assert not retry.on_failure(r, "nobody", "FAILED", "DOWNLOAD_FAILED", "", 1.0, 0.5)
    assert retry.on_failure(r, "r0", "FAILED", "DOWNLOAD_FAILED", "", 1.0, 0.5)
    r.pause(2.0, "paused by operator:bob")
    assert retry.due(r, 1000.0) == []
    r.resume(3.0, "operator:bob")
    assert retry.due(r, 1000.0) == ["r0"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.lists(st.booleans(), min_size=1, max_size=10))
def test_property_a_device_is_tried_at_most_max_tries_times(max_tries, fails) -> None:
    """Whatever the device reports, it gets at most max_tries dispatches, and the wave
    counts a failure only once the tries are spent."""
    r = make(max_tries=max_tries, n=1)
    now = 1.0
    for fail in fails:
        if r.waves[0].outcomes or r.state != "running":
            break
        report(r, "r0", "FAILED" if fail else "COMMITTED", "DOWNLOAD_FAILED", now)
        now += 1000.0
        r = reload(r)
        retry.redispatched(r, retry.due(r, now), now)
    assert retry.tries(r, "r0") <= max_tries
    if r.waves[0].failures:
        assert retry.tries(r, "r0") == max_tries
