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
