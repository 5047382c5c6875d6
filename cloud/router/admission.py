"""Admission to one backend: guaranteed QoS shares of its concurrency limit.

Each class owns a share of the limit (default SAFETY 0.3, INTERACTIVE 0.5, BATCH 0.2).
Shares bind only when the limit is contended: a class may borrow any slot that no
other class with recent demand has a claim on. The reserve held back for the other
classes is their unused guaranteed slots, counted only for classes that asked for
capacity in the last `demand_window_s`; so with SAFETY traffic present, BATCH is shed
first, then INTERACTIVE, and SAFETY last (the issue's shedding order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cloud.router.errors import RouterConfigError
from cloud.router.task import Qos

__all__ = ["Admission", "AdmissionConfig"]


def _default_shares() -> dict[Qos, float]:
    return {Qos.SAFETY: 0.3, Qos.INTERACTIVE: 0.5, Qos.BATCH: 0.2}


@dataclass(frozen=True)
class AdmissionConfig:
    shares: Mapping[Qos, float] = field(default_factory=_default_shares)
    demand_window_s: float = 1.0

    def validate(self) -> AdmissionConfig:
        for q in Qos:
            s = self.shares.get(q)
            if s is None or not (0.0 <= s <= 1.0):
                raise RouterConfigError(f"admission.shares[{q.name}] = {s!r}; expected 0 ≤ s ≤ 1")
        total = sum(self.shares.values())
        if total > 1.0 + 1e-9:
            raise RouterConfigError(f"admission.shares sum to {total:.3f}; expected ≤ 1")
        return self


class Admission:
    """Per-backend, per-class in-flight accounting with guaranteed shares."""

    def __init__(self, cfg: AdmissionConfig | None = None) -> None:
        self.cfg = (cfg or AdmissionConfig()).validate()
        self.in_flight: dict[Qos, int] = {q: 0 for q in Qos}
        self.last_demand: dict[Qos, float] = {q: float("-inf") for q in Qos}
        self.total = 0

    def note_demand(self, qos: Qos, now: float) -> None:
        self.last_demand[qos] = now

    def guaranteed(self, qos: Qos, limit: float) -> int:
        """Whole slots guaranteed to a class: floor(share · limit), so a small limit is
        first come, first served rather than blocked by fractional reservations."""
        return math.floor(self.cfg.shares[qos] * limit + 1e-9)

    def allows(self, qos: Qos, limit: float, now: float) -> bool:
        total = self.total
        if total + 1 > max(1.0, limit):
            return False
        if self.in_flight[qos] < self.guaranteed(qos, limit):
            return True  # within its own guaranteed share
        reserve = 0
        for other in Qos:
            if other is qos or now - self.last_demand[other] > self.cfg.demand_window_s:
                continue
            reserve += max(0, self.guaranteed(other, limit) - self.in_flight[other])
        return total + 1 <= max(1.0, limit) - reserve

    def acquire(self, qos: Qos) -> None:
        self.in_flight[qos] += 1
        self.total += 1

    def release(self, qos: Qos) -> None:
        if self.in_flight[qos] > 0:
            self.in_flight[qos] -= 1
            self.total -= 1
