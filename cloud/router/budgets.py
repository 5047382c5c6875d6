"""Budgets: tenant → site → device, per period, in USD and work units.

At admission the router reserves a task's worst-case cost at every level of its scope
in one atomic step; on completion it commits the actual cost (never more than was
reserved) and releases the rest; on failure it releases everything (refund); a
reservation not settled by its expiry is released by `expire` (leaked by a crashed
replica). A call settled after its reservation expired is still billed (`bill`, no
limit check: the money was spent); the router sizes reservations so this does not
happen (a reservation lives until its call's deadline). Limits per level:

- hard limit: `used + reserved + amount ≤ limit`, else denied; SAFETY tasks may go
  `safety_allowance_usd` beyond it, so a robot can still ask for a safety check when
  its tenant's money is gone.
- soft limit (`soft_fraction · limit`): past it only the cheapest tier is admitted.

A scope without its own budget is not limited at its level, but the tenant must have
one: a tenant without a budget is denied (`BUDGET_EXHAUSTED`, reason says so).

`BudgetLedger` is the abstract ledger; `MemoryLedger` keeps it in this process (tests,
the benchmark, a single replica); `cloud.store.budgets.SqlLedger` keeps it in the
store with conditional updates, so several replicas share one budget.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cloud.router.errors import BudgetError, RouterConfigError

__all__ = [
    "Budget",
    "BudgetLedger",
    "BudgetUsage",
    "Denial",
    "MemoryLedger",
    "Reservation",
    "ReserveOutcome",
    "period_index",
]


@dataclass(frozen=True)
class Budget:
    scope: str
    limit_usd: float
    limit_work_units: float | None = None
    soft_fraction: float = 0.8
    safety_allowance_usd: float = 0.0
    period_s: float = 30 * 86400.0

    def validate(self) -> Budget:
        if not self.scope or self.scope.count("/") > 2:
            raise RouterConfigError(f"budget scope {self.scope!r}: expected tenant[/site[/device]]")
        for name in ("limit_usd", "safety_allowance_usd", "period_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise RouterConfigError(f"budget {self.scope!r}: {name} = {v!r}; expected ≥ 0")
        if self.limit_work_units is not None and not self.limit_work_units >= 0:
            raise RouterConfigError(f"budget {self.scope!r}: limit_work_units must be ≥ 0")
        if not (0 < self.soft_fraction <= 1):
            raise RouterConfigError(f"budget {self.scope!r}: soft_fraction must be in (0, 1]")
        if self.period_s <= 0:
            raise RouterConfigError(f"budget {self.scope!r}: period_s must be > 0")
        return self


def period_index(now_unix: float, period_s: float) -> int:
    return int(now_unix // period_s)


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    scopes: tuple[str, ...]
    usd: float
    work_units: float
    safety: bool
    cheapest_tier: bool
    expires_at: float


class Denial(StrEnum):
    NONE = ""
    NO_BUDGET = "no_budget"
    SOFT = "soft_limit"
    HARD = "hard_limit"


@dataclass(frozen=True)
class ReserveOutcome:
    ok: bool
    denial: Denial = Denial.NONE
    scope: str = ""

    @property
    def reason(self) -> str:
        if self.ok:
            return ""
        if self.denial is Denial.NO_BUDGET:
            return f"tenant {self.scope!r} has no budget"
        return f"{self.denial.value} of {self.scope!r} reached"


@dataclass(frozen=True)
class BudgetUsage:
    scope: str
    limit_usd: float
    used_usd: float
    reserved_usd: float
    used_work_units: float
    reserved_work_units: float


class BudgetLedger(Protocol):
    def set_budget(self, budget: Budget) -> None: ...

    def reserve(self, r: Reservation, now_unix: float) -> ReserveOutcome: ...

    def commit(self, reservation_id: str, usd: float, work_units: float) -> None: ...

    def release(self, reservation_id: str) -> None: ...

    def expire(self, now_unix: float) -> int: ...

    def bill(self, scopes: tuple[str, ...], usd: float, work_units: float, now_unix: float) -> None:
        """Charge spent money that no reservation holds any more (a late answer)."""
        ...

    def usage(self, scope: str, now_unix: float) -> BudgetUsage | None: ...


def check_amounts(r: Reservation) -> None:
    for name, v in (("usd", r.usd), ("work_units", r.work_units)):
        if not (math.isfinite(v) and v >= 0):
            raise BudgetError(f"reservation {r.reservation_id}: {name} = {v!r}; expected ≥ 0")


def admissible(
    b: Budget, used_usd: float, res_usd: float, used_w: float, res_w: float, r: Reservation
) -> Denial:
    """The one admission rule both ledgers apply at each level."""
    hard = b.limit_usd + (b.safety_allowance_usd if r.safety else 0.0)
    if used_usd + res_usd + r.usd > hard + 1e-12:
        return Denial.HARD
    if (
        b.limit_work_units is not None
        and not r.safety
        and used_w + res_w + r.work_units > b.limit_work_units + 1e-12
    ):
        return Denial.HARD
    if (
        not r.cheapest_tier
        and not r.safety
        and used_usd + res_usd + r.usd > b.soft_fraction * b.limit_usd + 1e-12
    ):
        return Denial.SOFT
    return Denial.NONE


class MemoryLedger:
    """The ledger in one process; a lock makes every operation atomic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}
        # (scope, period) -> [used_usd, reserved_usd, used_w, reserved_w]
        self._usage: dict[tuple[str, int], list[float]] = {}
        # reservation id -> (reservation, [(scope, period)])
        self._open: dict[str, tuple[Reservation, list[tuple[str, int]]]] = {}
        self.overruns = 0

    def set_budget(self, budget: Budget) -> None:
        with self._lock:
            self._budgets[budget.validate().scope] = budget

    def reserve(self, r: Reservation, now_unix: float) -> ReserveOutcome:
        check_amounts(r)
        with self._lock:
            if r.reservation_id in self._open:
                raise BudgetError(f"reservation {r.reservation_id} already exists")
            if r.scopes[0] not in self._budgets:
                return ReserveOutcome(False, Denial.NO_BUDGET, r.scopes[0])
            keys = []
            for scope in r.scopes:
                b = self._budgets.get(scope)
                if b is None:
                    continue
                key = (scope, period_index(now_unix, b.period_s))
                u = self._usage.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                denial = admissible(b, u[0], u[1], u[2], u[3], r)
                if denial is not Denial.NONE:
                    return ReserveOutcome(False, denial, scope)
                keys.append(key)
            for key in keys:
                u = self._usage[key]
                u[1] += r.usd
                u[3] += r.work_units
            self._open[r.reservation_id] = (r, keys)
            return ReserveOutcome(True)

    def _settle(self, reservation_id: str, usd: float, work_units: float) -> None:
        with self._lock:
            entry = self._open.pop(reservation_id, None)
            if entry is None:
                raise BudgetError(f"reservation {reservation_id} is not open (settled or expired)")
            r, keys = entry
            usd = min(max(usd, 0.0), r.usd)
            work_units = min(max(work_units, 0.0), r.work_units)
            for key in keys:
                u = self._usage[key]
                u[1] = max(0.0, u[1] - r.usd)
                u[3] = max(0.0, u[3] - r.work_units)
                u[0] += usd
                u[2] += work_units
                b = self._budgets[key[0]]
                if u[0] > b.limit_usd + b.safety_allowance_usd + 1e-9:
                    self.overruns += 1  # cannot happen by construction; counted to prove it

    def commit(self, reservation_id: str, usd: float, work_units: float) -> None:
        if not (math.isfinite(usd) and math.isfinite(work_units)):
            raise BudgetError(f"reservation {reservation_id}: non-finite actual cost")
        self._settle(reservation_id, usd, work_units)

    def release(self, reservation_id: str) -> None:
        self._settle(reservation_id, 0.0, 0.0)

    def bill(self, scopes: tuple[str, ...], usd: float, work_units: float, now_unix: float) -> None:
        if not (math.isfinite(usd) and math.isfinite(work_units) and usd >= 0 and work_units >= 0):
            raise BudgetError(f"bill of {usd!r} USD, {work_units!r} work units; expected ≥ 0")
        with self._lock:
            for scope in scopes:
                b = self._budgets.get(scope)
                if b is None:
                    continue
                u = self._usage.setdefault(
                    (scope, period_index(now_unix, b.period_s)), [0.0, 0.0, 0.0, 0.0]
                )
                u[0] += usd
                u[2] += work_units
                if u[0] > b.limit_usd + b.safety_allowance_usd + 1e-9:
                    self.overruns += 1

    def expire(self, now_unix: float) -> int:
        with self._lock:
            gone = [rid for rid, (r, _) in self._open.items() if r.expires_at <= now_unix]
        for rid in gone:
            with contextlib.suppress(BudgetError):  # settled concurrently
                self.release(rid)
        return len(gone)

    def usage(self, scope: str, now_unix: float) -> BudgetUsage | None:
        with self._lock:
            b = self._budgets.get(scope)
            if b is None:
                return None
            u = self._usage.get((scope, period_index(now_unix, b.period_s)), [0.0] * 4)
            return BudgetUsage(scope, b.limit_usd, u[0], u[1], u[2], u[3])

    def open_reservations(self) -> int:
        with self._lock:
            return len(self._open)
