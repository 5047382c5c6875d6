"""Per-backend concurrency limit after Netflix's Gradient2, with work-normalised latency.

Per sample (as in Netflix's concurrency-limits library): g = clamp(tolerance · long / short,
0.5, 1); when g = 1 and the limit is actually in use, the target grows by √L, otherwise
it is L·g; the limit is smoothed, L = 0.8·L + 0.2·L′; a timeout or an explicit overload
answer multiplies L by 0.9.

`short` is an EWMA of latency per work unit. Gradient2's `long` is an EWMA that drifts
up under sustained queueing (the limit then grows without bound); here `long` is the
minimum of `short` over a sliding time window instead, and, as BBR's ProbeRTT does,
the limiter briefly halves its limit when that minimum is about to expire so that it
re-measures the uncongested latency. A brown-out (every call slower, no queueing) thus
lowers the limit at first and, once the window has forgotten the old latency, the
limit recovers to the backend's real concurrency.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Gradient2", "Gradient2Config"]


@dataclass(frozen=True)
class Gradient2Config:
    initial_limit: float = 4.0
    min_limit: float = 1.0
    max_limit: float = 1000.0
    tolerance: float = 1.5
    smoothing: float = 0.2
    short_alpha: float = 0.5
    """EWMA weight of each window's mean in the reported short-term latency."""
    min_growth: float = 2.0
    """Floor of the √L growth step, so a limit knocked down to 1 climbs back quickly
    (Netflix's default queue-size function is max(4, √L))."""
    min_window: int = 2
    """Fewest samples averaged per limit update."""
    baseline_window_s: float = 4.0
    """How long a minimum latency is trusted before it must be re-measured."""
    drop_factor: float = 0.9


class Gradient2:
    def __init__(self, config: Gradient2Config | None = None, now: float = 0.0) -> None:
        self.cfg = config or Gradient2Config()
        self.limit = min(max(self.cfg.initial_limit, self.cfg.min_limit), self.cfg.max_limit)
        self.short: float | None = None
        # (time, value) pairs with increasing values: a monotonic deque for a windowed min.
        self._mins: deque[tuple[float, float]] = deque()
        self._next_probe = now
        self._acc, self._acc_n, self._acc_used = 0.0, 0, 0
        self.samples = 0
        self.drops = 0

    @property
    def baseline(self) -> float | None:
        return self._mins[0][1] if self._mins else None

    def per_unit_latency(self) -> float | None:
        return self.short

    def on_sample(self, latency_s: float, work_units: float, in_flight: int, now: float) -> None:
        """Record one successful response; `in_flight` is the count when it was sent.

        Samples are averaged over a window of about half the limit (at least
        `min_window` samples), as Netflix's windowed limit does, so that a burst of
        responses that left before the limit changed cannot swing it.
        """
        if not (math.isfinite(latency_s) and latency_s >= 0):
            return
        self.samples += 1
        self._acc += latency_s / max(work_units, 1e-9)
        self._acc_n += 1
        self._acc_used = max(self._acc_used, in_flight)
        if self._acc_n < max(self.cfg.min_window, math.ceil(self.limit / 2)):
            return
        short, used = self._acc / self._acc_n, self._acc_used
        self._acc, self._acc_n, self._acc_used = 0.0, 0, 0
        a = self.cfg.short_alpha
        self.short = short if self.short is None else (1 - a) * self.short + a * short
        window = self.cfg.baseline_window_s
        while self._mins and self._mins[0][0] < now - window:
            self._mins.popleft()
        while self._mins and self._mins[-1][1] >= short:
            self._mins.pop()
        self._mins.append((now, short))
        if now - self._mins[0][0] > window / 2 and now >= self._next_probe:
            # ProbeRTT: the minimum is ageing without being re-measured, so the queue has
            # not drained for a while; halve the limit once to see the uncongested latency.
            self._next_probe = now + window / 2
            self.limit = max(self.cfg.min_limit, self.limit / 2)
            return
        long = self._mins[0][1]
        g = min(1.0, max(0.5, self.cfg.tolerance * long / short)) if short > 0 else 1.0
        if g >= 1.0:
            # Grow only when the limit was in use during the window (app-limited rule).
            grow = max(self.cfg.min_growth, math.sqrt(self.limit))
            target = self.limit + grow if used >= self.limit / 2 else self.limit
        else:
            target = self.limit * g
        limit = (1 - self.cfg.smoothing) * self.limit + self.cfg.smoothing * target
        self.limit = min(max(limit, self.cfg.min_limit), self.cfg.max_limit)

    def on_drop(self) -> None:
        """A timeout or explicit overload: multiplicative back-off."""
        self.drops += 1
        self.limit = max(self.cfg.min_limit, self.limit * self.cfg.drop_factor)

    def state(self) -> dict[str, float | None]:
        return {"limit": round(self.limit, 3), "short": self.short, "baseline": self.baseline}
