"""The health window: the one place a candidate's health is judged.

After a switch the candidate drives the robot for a number of ticks; it fails when
the control loop stops, when the ticks do not run in time, or when too many of them
needed the manifest's fallback action or missed their deadline. The verdict is a
:class:`~protos.lifecycle.Failure` (``HEALTH_WINDOW_FAILED`` or ``HEALTH_CRASH``) or
None; the runtime rolls an unhealthy candidate back itself, and the agent reports the
verdict as it got it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from protos.lifecycle import Failure, Reason
from runtime.envelope import FALLBACK_REASONS
from runtime.loop import ControlLoop

__all__ = ["HealthLimits", "WindowCounts", "judge_counts", "watch"]


@dataclass(frozen=True)
class HealthLimits:
    max_fallback_rate: float
    """Fraction of the window's ticks that may get the fallback action."""
    max_miss_rate: float
    """Fraction of the window's tick slots that may miss their deadline."""


@dataclass(frozen=True)
class WindowCounts:
    """What happened over a window: ticks run, tick slots (ticks plus those a stall
    swallowed), ticks that got the fallback action, deadline misses."""

    ticks: int
    slots: int
    fallbacks: int
    misses: int
    interventions: Mapping[str, int]


def judge_counts(w: WindowCounts, limits: HealthLimits) -> Failure | None:
    """The verdict on a window that ran to its end (pure)."""
    if w.ticks <= 0:
        return None
    if w.fallbacks / w.ticks > limits.max_fallback_rate:
        return _failed(
            f"{w.fallbacks}/{w.ticks} ticks got the fallback action (limit "
            f"{limits.max_fallback_rate:.1%}): {dict(w.interventions)}"
        )
    if w.misses / max(w.slots, 1) > limits.max_miss_rate:
        return _failed(
            f"{w.misses}/{w.slots} tick slots missed their deadline (limit "
            f"{limits.max_miss_rate:.1%})"
        )
    return None


def watch(loop: ControlLoop, ticks: int, limits: HealthLimits) -> Failure | None:
    """Watch `loop` for `ticks` ticks from now; None if healthy, else why not."""
    if ticks <= 0:
        return None
    c = loop.counters
    start_ticks, start_misses, start_skipped = c.ticks, c.deadline_misses, c.skipped
    start_fb = _fallbacks(c.interventions)
    deadline = time.monotonic() + 10.0 + 3.0 * ticks / loop.rate_hz
    while c.ticks - start_ticks < ticks:
        if not loop.running:
            return Failure(
                Reason.HEALTH_CRASH,
                f"health window failed: the control loop stopped ({loop.error})",
            )
        if time.monotonic() > deadline:
            return _failed(f"only {c.ticks - start_ticks}/{ticks} ticks ran in time")
        time.sleep(min(0.05, 0.5 * ticks / loop.rate_hz))
    n = c.ticks - start_ticks
    counts = WindowCounts(
        ticks=n,
        slots=n + c.skipped - start_skipped,
        fallbacks=_fallbacks(c.interventions) - start_fb,
        misses=c.deadline_misses - start_misses,
        interventions=dict(c.interventions),
    )
    return judge_counts(counts, limits)


def _failed(detail: str) -> Failure:
    return Failure(Reason.HEALTH_WINDOW_FAILED, f"health window failed: {detail}")


def _fallbacks(interventions: Mapping[str, int]) -> int:
    # Copy first (one C-level call under the GIL): the loop thread may add a key meanwhile.
    return sum(n for r, n in dict(interventions).items() if r in FALLBACK_REASONS)
