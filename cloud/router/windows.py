"""Token-bucket rate windows for work units/s and USD/s, adjusted AIMD-style.

With the Gradient2 concurrency limit these form the ATP "window triplet" of a
backend. Rates grow additively on each success and shrink multiplicatively: ×0.5 on
explicit overload or pushback (the backend told us), ×0.9 on a latency-SLO breach
(we inferred it). The bucket holds `burst_s` seconds of the current rate.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AimdBucket", "AimdConfig", "WindowTriplet"]


@dataclass(frozen=True)
class AimdConfig:
    initial_rate: float
    min_rate: float
    max_rate: float
    increase: float
    """Added to the rate per success (units/s)."""
    burst_s: float = 2.0
    overload_factor: float = 0.5
    slo_factor: float = 0.9


class AimdBucket:
    def __init__(self, cfg: AimdConfig, now: float) -> None:
        self.cfg = cfg
        self.rate = cfg.initial_rate
        self.tokens = cfg.initial_rate * cfg.burst_s
        self._t = now

    def _refill(self, now: float) -> None:
        if now > self._t:
            cap = self.rate * self.cfg.burst_s
            self.tokens = min(cap, self.tokens + (now - self._t) * self.rate)
            self._t = now

    def available(self, amount: float, now: float) -> bool:
        self._refill(now)
        # A request larger than the whole bucket may pass when the bucket is full, so an
        # oversized task is slowed, never starved.
        return self.tokens >= min(amount, self.rate * self.cfg.burst_s)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount

    def refund(self, amount: float) -> None:
        self.tokens = min(self.rate * self.cfg.burst_s, self.tokens + amount)

    def wait_s(self, amount: float, now: float) -> float:
        self._refill(now)
        need = min(amount, self.rate * self.cfg.burst_s) - self.tokens
        return max(0.0, need / self.rate) if self.rate > 0 else float("inf")

    def on_success(self) -> None:
        self.rate = min(self.cfg.max_rate, self.rate + self.cfg.increase)

    def on_overload(self) -> None:
        self.rate = max(self.cfg.min_rate, self.rate * self.cfg.overload_factor)

    def on_slo_breach(self) -> None:
        self.rate = max(self.cfg.min_rate, self.rate * self.cfg.slo_factor)


class WindowTriplet:
    """Work-units/s and USD/s buckets of one backend (the limiter is kept alongside)."""

    def __init__(self, work_rate: float, usd_rate: float, now: float) -> None:
        self.work = AimdBucket(
            AimdConfig(work_rate, work_rate * 0.05, work_rate * 4, work_rate * 0.01), now
        )
        self.usd = AimdBucket(
            AimdConfig(usd_rate, usd_rate * 0.05, usd_rate * 4, usd_rate * 0.01), now
        )

    def admits(self, work_units: float, usd: float, now: float) -> bool:
        return self.work.available(work_units, now) and self.usd.available(usd, now)

    def wait_s(self, work_units: float, usd: float, now: float) -> float:
        return max(self.work.wait_s(work_units, now), self.usd.wait_s(usd, now))

    def take(self, work_units: float, usd: float, now: float) -> None:
        self.work.take(work_units, now)
        self.usd.take(usd, now)

    def on_success(self) -> None:
        self.work.on_success()
        self.usd.on_success()

    def on_overload(self) -> None:
        self.work.on_overload()
        self.usd.on_overload()

    def on_slo_breach(self) -> None:
        self.work.on_slo_breach()
        self.usd.on_slo_breach()
