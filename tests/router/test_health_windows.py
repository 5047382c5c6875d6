"""Backend health (cooldown, exponential back-off, half-open, slow start) and the AIMD
rate windows, on explicit clocks."""

from __future__ import annotations

import pytest

from cloud.router.health import Health, HealthConfig, HealthState
from cloud.router.windows import AimdBucket, AimdConfig

CFG = HealthConfig(
    failure_rate=0.5,
    min_calls=4,
    ewma_alpha=0.5,
    base_ejection_s=1.0,
    max_ejection_s=8.0,
    slow_start_s=4.0,
    pushback_cooldown_s=0.25,
)


def _eject(h: Health, now: float) -> None:
    for _ in range(10):
        if h.state is HealthState.EJECTED:
            return
        h.on_failure(now)


def test_failures_eject_for_a_cooldown_then_one_half_open_probe_at_a_time() -> None:
    h = Health(CFG)
    _eject(h, 0.0)
    assert h.state is HealthState.EJECTED and not h.available(0.5)
    assert h.cooldown_remaining(0.5) == pytest.approx(0.5)
    assert h.available(1.0) and h.is_probe(1.0)
    h.on_dispatch(1.0)
    assert not h.available(1.0)  # one probe in flight; the rest wait


def test_failed_probes_double_the_ejection_up_to_the_cap() -> None:
    h = Health(CFG)
    _eject(h, 0.0)
    now, durations = 0.0, []
    for _ in range(6):
        now = h.until
        assert h.available(now)
        h.on_dispatch(now)
        h.on_failure(now)
        durations.append(h.until - now)
    assert durations == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_a_successful_probe_recovers_with_slow_start() -> None:
    h = Health(CFG)
    _eject(h, 0.0)
    h.on_dispatch(1.0)
    h.on_success(1.0)
    assert h.state is HealthState.HEALTHY and h.available(1.0)
    assert h.limit_factor(1.0) == pytest.approx(0.1)
    assert h.limit_factor(3.0) == pytest.approx(0.5)
    assert h.limit_factor(5.0) == 1.0
    _eject(h, 10.0)  # back-off restarted at the base after a recovery
    assert h.until - 10.0 == pytest.approx(1.0)


def test_explicit_pushback_cools_down_at_once() -> None:
    h = Health(CFG)
    h.on_failure(0.0, pushback=True)
    assert not h.available(0.1) and h.available(0.25)


def test_a_few_failures_among_many_successes_do_not_eject() -> None:
    h = Health(CFG)
    for i in range(100):
        (h.on_failure if i % 5 == 0 else h.on_success)(float(i))
    assert h.state is HealthState.HEALTHY


def test_aimd_grows_additively_and_backs_off_multiplicatively() -> None:
    b = AimdBucket(AimdConfig(10.0, 1.0, 20.0, increase=1.0, burst_s=1.0), 0.0)
    b.on_success()
    assert b.rate == 11.0
    b.on_overload()
    assert b.rate == 5.5
    b.on_slo_breach()
    assert b.rate == pytest.approx(4.95)
    for _ in range(10):
        b.on_overload()
    assert b.rate == 1.0  # floor
    for _ in range(100):
        b.on_success()
    assert b.rate == 20.0  # cap


def test_the_bucket_refills_at_its_rate_and_never_starves_a_large_request() -> None:
    b = AimdBucket(AimdConfig(10.0, 1.0, 20.0, increase=1.0, burst_s=1.0), 0.0)
    assert b.available(10.0, 0.0)
    b.take(10.0, 0.0)
    assert not b.available(1.0, 0.0)
    assert b.wait_s(5.0, 0.0) == pytest.approx(0.5)
    assert b.available(5.0, 0.5)
    assert b.available(1e6, 2.0)  # bigger than the bucket: passes once it is full
