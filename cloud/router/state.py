"""The router's state: its settings, the messages it exchanges with its driver, and
what it keeps per backend, per task and per open call. Plain data, no behaviour
beyond bookkeeping."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud.router.admission import Admission, AdmissionConfig
from cloud.router.backends import BackendSpec, Registry
from cloud.router.consensus import Vote
from cloud.router.errors import RouterConfigError
from cloud.router.health import Health, HealthConfig
from cloud.router.limiter import Gradient2, Gradient2Config
from cloud.router.task import Answer, Qos, Result, Task
from cloud.router.verifier import Verdict
from cloud.router.windows import WindowTriplet

__all__ = [
    "ABSURD_WORK_FACTOR",
    "CANDIDATE_FIELDS",
    "TIMEOUT_ERRORS",
    "BackendState",
    "Dispatch",
    "OpenCall",
    "RouterConfig",
    "Step",
    "TaskState",
    "finite",
    "finite_or",
    "reservation_ttl",
]

# The columns of each row of an audit record's "candidates".
CANDIDATE_FIELDS = (
    "backend",
    "tier",
    "predicted_quality",
    "predicted_latency_s",
    "concurrency_limit",
    "in_flight",
    "skip_reason",
)

# Errors after which the backend has worked (and billed) until the deadline.
TIMEOUT_ERRORS = frozenset({"timeout", "deadline exceeded"})

# A reported cost more than this many times the task's declared work is taken as absurd.
ABSURD_WORK_FACTOR = 100.0


def _default_floors() -> dict[Qos, float]:
    return {Qos.SAFETY: 0.9, Qos.INTERACTIVE: 0.7, Qos.BATCH: 0.5}


@dataclass(frozen=True)
class RouterConfig:
    quality_floor: Mapping[Qos, float] = field(default_factory=_default_floors)
    accept_score: float = 0.6
    grey_low: float = 0.3
    """Scores in [grey_low, accept_score) on non-SAFETY tasks ask for consensus."""
    max_escalations: int = 2
    consensus_k: int = 3
    consensus_tolerance: float = 0.05
    consensus_majority: float = 0.5
    hedge_ratio: float = 0.1
    """Hedges allowed per routed task (a retry budget)."""
    hedge_min_samples: int = 20
    reservation_ttl_s: float | None = None
    """The longest the ledger holds a reservation. None: the longest backend timeout plus
    `reservation_grace_s`. A backend whose timeout (plus the grace) exceeds it is refused
    at start: its reservation could expire while its call still runs."""
    reservation_grace_s: float = 30.0
    """A reservation lives until its dispatch deadline plus this much (clock skew between
    the router's monotonic clock and the ledger's wall clock, a slow router thread)."""
    queue_limit: int = 256
    """Tasks that may wait for a slot (deadline permitting) before new ones are shed."""
    drain_interval_s: float = 0.02
    slo_factor: float = 2.0
    """A response slower than this × its predicted latency breaches the latency SLO."""
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    seed: int = 0


@dataclass(frozen=True)
class Dispatch:
    dispatch_id: str
    task: Task
    backend: str
    sent_at: float
    deadline_at: float
    purpose: str  # primary | escalation | hedge | consensus | mirror | probe


@dataclass
class Step:
    dispatches: list[Dispatch] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    def extend(self, other: Step) -> None:
        self.dispatches += other.dispatches
        self.cancels += other.cancels
        self.results += other.results


class BackendState:
    """Everything the router learns about one backend."""

    def __init__(self, spec: BackendSpec, cfg: RouterConfig, now: float) -> None:
        self.spec = spec
        self.limiter = Gradient2(
            Gradient2Config(initial_limit=float(spec.capacity), max_limit=spec.capacity * 8.0),
            now,
        )
        per_unit_s = max(spec.latency_s_per_work_unit, 1e-6)
        work_rate = spec.capacity / per_unit_s  # work units/s at the declared capacity
        usd_rate = max(spec.price.cost(1.0, per_unit_s), 1e-9) * work_rate
        self.windows = WindowTriplet(work_rate, usd_rate, now)
        self.admission = Admission(cfg.admission)
        self.health = Health(cfg.health)
        self.latencies: deque[float] = deque(maxlen=256)
        self._p95: float | None = None
        self._since_p95 = 0
        self.calls = 0
        self.failures = 0
        self.bad_cost_reports = 0

    @property
    def in_flight(self) -> int:
        return self.admission.total

    def effective_limit(self, now: float) -> float:
        return max(1.0, self.limiter.limit * self.health.limit_factor(now))

    def per_unit_s(self) -> float:
        s = self.limiter.per_unit_latency()
        return s if s is not None else self.spec.latency_s_per_work_unit

    def predicted_latency(self, work_units: float) -> float:
        return self.per_unit_s() * max(work_units, 1e-9)

    def record_latency(self, latency_s: float) -> None:
        self.latencies.append(latency_s)
        self._since_p95 += 1
        if self._p95 is None or self._since_p95 >= 32:
            ordered = sorted(self.latencies)
            self._p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            self._since_p95 = 0

    def p95(self) -> float | None:
        return self._p95


@dataclass
class TaskState:
    task: Task
    received_at: float
    candidates: list[list[Any]]
    outstanding: set[str] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    escalations: int = 0
    hedged: bool = False
    consensus: list[Vote] | None = None
    best: tuple[str, Answer, Verdict] | None = None
    done: bool = False
    cost_usd: float = 0.0
    pair: list[float | None] | None = None
    """Champion/challenger: [champion accepted, challenger accepted] once known."""


@dataclass
class OpenCall:
    d: Dispatch
    ts: TaskState
    worst_usd: float
    in_flight_at_send: int
    predicted_s: float


def reservation_ttl(cfg: RouterConfig, registry: Registry) -> float:
    """The ledger's hold on a reservation; refuse a backend that could outlive it."""
    grace = cfg.reservation_grace_s
    if not (math.isfinite(grace) and grace >= 0):
        raise RouterConfigError(f"reservation_grace_s = {grace!r}; expected ≥ 0")
    longest = max((s.timeout_s for s in registry), default=0.0)
    ttl = cfg.reservation_ttl_s
    if ttl is None:
        return longest + grace
    if not (math.isfinite(ttl) and ttl > 0):
        raise RouterConfigError(f"reservation_ttl_s = {ttl!r}; expected > 0")
    for s in registry:
        if s.timeout_s + grace > ttl:
            raise RouterConfigError(
                f"backend {s.name!r}: timeout_s = {s.timeout_s} plus reservation_grace_s = "
                f"{grace} exceeds reservation_ttl_s = {ttl}; a reservation would expire "
                "while its call still runs (raise reservation_ttl_s or lower timeout_s)"
            )
    return ttl


def finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


def finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: audit them as strings rather than fail the decision."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
