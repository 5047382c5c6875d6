"""The health window's verdict on a window's counts (pure; the real window runs in
test_service.py and the fleet end-to-end test)."""

from __future__ import annotations

import pytest

from protos.lifecycle import Reason
from runtime.health import HealthLimits, WindowCounts, judge_counts

LIMITS = HealthLimits(max_fallback_rate=0.02, max_miss_rate=0.05)


@pytest.mark.parametrize(
    ("ticks", "slots", "fallbacks", "misses", "failed", "says"),
    [
        (100, 100, 0, 0, False, ""),
        (100, 100, 2, 5, False, ""),  # at both limits: healthy
        (100, 100, 3, 0, True, "3/100 ticks got the fallback action (limit 2.0%)"),
        (100, 100, 0, 6, True, "6/100 tick slots missed their deadline (limit 5.0%)"),
        (90, 120, 0, 6, False, ""),  # misses are per tick slot, stalls included
        (0, 0, 0, 0, False, ""),
    ],
)
def test_judge_counts(
    ticks: int, slots: int, fallbacks: int, misses: int, failed: bool, says: str
) -> None:
    verdict = judge_counts(WindowCounts(ticks, slots, fallbacks, misses, {}), LIMITS)
    assert (verdict is not None) is failed
    if verdict is not None:
        assert verdict.code is Reason.HEALTH_WINDOW_FAILED
        assert verdict.detail.startswith("health window failed: " + says)
