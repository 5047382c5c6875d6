"""Backend health: cooldown, exponential ejection back-off, half-open probes, slow start.

A backend is ejected when its recent failure rate passes a threshold (after a minimum
number of calls) or when it pushes back explicitly. It stays out for
`base_ejection_s · 2^(k-1)` (k = consecutive ejections, capped), then turns half-open:
one probe call at a time may go through. A successful probe brings it back with a slow
start (its usable limit ramps from 10 % to 100 % over `slow_start_s`); a failed probe
ejects it again for twice as long. Because recovery needs only a probe, never the
presence of another healthy backend, a single-backend pool always recovers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Health", "HealthConfig", "HealthState"]


class HealthState(StrEnum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class HealthConfig:
    failure_rate: float = 0.5
    min_calls: int = 10
    ewma_alpha: float = 0.1
    base_ejection_s: float = 1.0
    max_ejection_s: float = 30.0
    slow_start_s: float = 5.0
    pushback_cooldown_s: float = 0.5


class Health:
    def __init__(self, cfg: HealthConfig | None = None) -> None:
        self.cfg = cfg or HealthConfig()
        self.state = HealthState.HEALTHY
        self.fail_ewma = 0.0
        self.calls = 0
        self.ejections = 0
        self.until = 0.0
        self.recovered_at = float("-inf")
        self.probe_in_flight = False

    def _refresh(self, now: float) -> None:
        if self.state is HealthState.EJECTED and now >= self.until:
            self.state = HealthState.HALF_OPEN
            self.probe_in_flight = False

    def available(self, now: float) -> bool:
        """May a call be sent now (a half-open backend takes one probe at a time)?"""
        self._refresh(now)
        if self.state is HealthState.HEALTHY:
            return True
        return self.state is HealthState.HALF_OPEN and not self.probe_in_flight

    def is_probe(self, now: float) -> bool:
        self._refresh(now)
        return self.state is HealthState.HALF_OPEN

    def on_dispatch(self, now: float) -> None:
        if self.is_probe(now):
            self.probe_in_flight = True

    def limit_factor(self, now: float) -> float:
        """Slow start: the share of the concurrency limit usable right after recovery."""
        age = now - self.recovered_at
        if age >= self.cfg.slow_start_s:
            return 1.0
        return max(0.1, age / self.cfg.slow_start_s)

    def cooldown_remaining(self, now: float) -> float:
        self._refresh(now)
        return max(0.0, self.until - now) if self.state is HealthState.EJECTED else 0.0

    def on_success(self, now: float) -> None:
        self._refresh(now)
        self.calls += 1
        self.fail_ewma *= 1 - self.cfg.ewma_alpha
        if self.state is HealthState.HALF_OPEN:
            self.state = HealthState.HEALTHY
            self.recovered_at = now
            self.ejections = 0
            self.calls = 0
            self.fail_ewma = 0.0
            self.probe_in_flight = False

    def on_failure(self, now: float, pushback: bool = False) -> None:
        self._refresh(now)
        self.calls += 1
        self.fail_ewma = (1 - self.cfg.ewma_alpha) * self.fail_ewma + self.cfg.ewma_alpha
        if self.state is HealthState.HALF_OPEN:
            self._eject(now, None)
        elif self.state is HealthState.HEALTHY:
            if pushback:
                self._eject(now, self.cfg.pushback_cooldown_s)
            elif self.calls >= self.cfg.min_calls and self.fail_ewma >= self.cfg.failure_rate:
                self._eject(now, None)

    def _eject(self, now: float, duration: float | None) -> None:
        self.ejections += 1
        if duration is None:
            duration = min(
                self.cfg.max_ejection_s, self.cfg.base_ejection_s * 2 ** (self.ejections - 1)
            )
        self.state = HealthState.EJECTED
        self.until = now + duration
        self.probe_in_flight = False
        self.fail_ewma = self.cfg.failure_rate / 2
        self.calls = 0
