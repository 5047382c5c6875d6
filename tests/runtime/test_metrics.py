from __future__ import annotations

import numpy as np
import pytest

from runtime.metrics import LatencyHistogram, LoopCounters


def test_histogram_quantiles_are_within_two_percent_of_exact() -> None:
    rng = np.random.default_rng(1)
    samples = (rng.lognormal(mean=np.log(50_000), sigma=0.8, size=20_000)).astype(int)
    h = LatencyHistogram()
    for s in samples:
        h.record_ns(int(s))
    for q in (0.5, 0.99, 0.999):
        exact = np.quantile(samples, q, method="inverted_cdf") / 1e6
        assert h.quantile_ms(q) == pytest.approx(exact, rel=0.02)
    assert h.max_ms == samples.max() / 1e6
    assert h.count == samples.size


def test_histogram_handles_empty_tiny_and_huge_values() -> None:
    h = LatencyHistogram()
    assert h.quantile_ms(0.99) == 0.0
    h.record_ns(0)
    h.record_ns(10**13)  # beyond the top bucket: clamped, max still exact
    assert h.max_ms == 1e7
    assert h.quantile_ms(0.5) < 0.001
    with pytest.raises(ValueError, match="quantile"):
        h.quantile_ms(0)


def test_snapshot_reports_counts_and_miss_rate() -> None:
    c = LoopCounters()
    for _ in range(10):
        c.latency.record_ns(100_000)
        c.ticks += 1
    c.deadline_misses = 1
    c.intervene("obs_shape")
    snap = c.snapshot(rate_hz=100.0)
    assert snap.miss_rate == 0.1
    assert snap.interventions == {"obs_shape": 1}
    assert snap.latency_p50_ms == pytest.approx(0.1, rel=0.02)


def test_batched_recording_matches_one_by_one() -> None:
    rng = np.random.default_rng(2)
    samples = [int(s) for s in rng.lognormal(np.log(80_000), 1.0, 5_000)] + [0, 500, 10**13]
    one, many = LatencyHistogram(), LatencyHistogram()
    for s in samples:
        one.record_ns(s)
    many.record_many(samples[:1000])
    many.record_many(samples[1000:])
    many.record_many([])
    assert (many.count, many.sum_ns, many.max_ns) == (one.count, one.sum_ns, one.max_ns)
    for q in (0.01, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert many.quantile_ms(q) == pytest.approx(one.quantile_ms(q), rel=0.021)


def test_counters_flush_pending_samples() -> None:
    c = LoopCounters()
    c.pending_latency.extend([100_000] * 3)
    c.pending_jitter.append(50_000)
    assert c.latency.count == 0
    c.flush()
    assert (c.latency.count, c.jitter.count) == (3, 1)
    assert not c.pending_latency and not c.pending_jitter


def test_miss_rate_is_per_tick_slot_including_skipped_ones() -> None:
    c = LoopCounters()
    c.ticks, c.skipped, c.deadline_misses = 10, 30, 31  # one late tick, then a 30-slot stall
    assert c.snapshot(rate_hz=100.0).miss_rate == pytest.approx(31 / 40)
