"""The registry of backends ("agents") the router may send tasks to.

A backend declares what it can do (task types), its tier (0 = cheapest), how it is
priced, how much concurrency it claims, its predicted quality per task type and a
nominal latency per work unit used until real telemetry arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from cloud.router.errors import RouterConfigError

__all__ = ["BackendSpec", "PriceModel", "Registry"]

# A single call costing more than this is taken as a configuration mistake.
ABSURD_USD_PER_CALL = 1_000.0


def _check_amount(name: str, value: float, what: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise RouterConfigError(
            f"backend {name!r}: {what} = {value!r}; expected a finite value ≥ 0"
        )


@dataclass(frozen=True)
class PriceModel:
    """USD per call + per work unit + per GPU-second (any may be zero)."""

    per_call_usd: float = 0.0
    per_work_unit_usd: float = 0.0
    per_gpu_second_usd: float = 0.0

    def cost(self, work_units: float, gpu_s: float) -> float:
        return (
            self.per_call_usd
            + self.per_work_unit_usd * max(0.0, work_units)
            + self.per_gpu_second_usd * max(0.0, gpu_s)
        )


@dataclass(frozen=True)
class BackendSpec:
    name: str
    tier: int
    task_types: frozenset[str]
    price: PriceModel = field(default_factory=PriceModel)
    capacity: int = 4
    """Declared concurrency (the limiter's starting point, not a promise)."""
    quality: Mapping[str, float] = field(default_factory=dict)
    """Predicted probability of an accepted, correct answer, per task type."""
    latency_s_per_work_unit: float = 0.05
    """Nominal service time per work unit, used before telemetry exists."""
    timeout_s: float = 30.0

    def validate(self) -> BackendSpec:
        n = self.name
        if not n or any(c.isspace() for c in n):
            raise RouterConfigError(f"backend name {n!r}: expected a non-empty name without spaces")
        if self.tier < 0:
            raise RouterConfigError(f"backend {n!r}: tier = {self.tier}; expected ≥ 0")
        if not self.task_types:
            raise RouterConfigError(f"backend {n!r}: task_types is empty; list what it can do")
        if self.capacity < 1:
            raise RouterConfigError(f"backend {n!r}: capacity = {self.capacity}; expected ≥ 1")
        for what in ("per_call_usd", "per_work_unit_usd", "per_gpu_second_usd"):
            _check_amount(n, getattr(self.price, what), f"price.{what}")
        if self.price.per_call_usd > ABSURD_USD_PER_CALL:
            raise RouterConfigError(
                f"backend {n!r}: price.per_call_usd = {self.price.per_call_usd} is above the "
                f"sanity cap of {ABSURD_USD_PER_CALL} USD per call"
            )
        _check_amount(n, self.latency_s_per_work_unit, "latency_s_per_work_unit")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise RouterConfigError(f"backend {n!r}: timeout_s = {self.timeout_s}; expected > 0")
        for tt, q in self.quality.items():
            if not (0.0 <= q <= 1.0):
                raise RouterConfigError(
                    f"backend {n!r}: quality[{tt!r}] = {q}; expected a probability in [0, 1]"
                )
        return self

    def worst_case_usd(self, work_units: float, max_seconds: float) -> float:
        """The most one call can cost: full price for its work and GPU time to the timeout."""
        return self.price.cost(work_units, min(max_seconds, self.timeout_s))


class Registry:
    """Backends by name, with a per-task-type index kept in (tier, name) order."""

    def __init__(self, specs: Iterable[BackendSpec] = ()) -> None:
        self._specs: dict[str, BackendSpec] = {}
        self._by_type: dict[str, list[BackendSpec]] = {}
        for s in specs:
            self.add(s)

    def add(self, spec: BackendSpec) -> None:
        spec.validate()
        if spec.name in self._specs:
            raise RouterConfigError(f"backend {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        for tt in spec.task_types:
            lst = self._by_type.setdefault(tt, [])
            lst.append(spec)
            lst.sort(key=lambda b: (b.tier, b.name))

    def __getitem__(self, name: str) -> BackendSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[BackendSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def capable(self, task_type: str) -> list[BackendSpec]:
        return self._by_type.get(task_type, [])

    def task_types(self) -> list[str]:
        return sorted(self._by_type)
