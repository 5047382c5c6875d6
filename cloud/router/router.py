"""The Router: admission, windows, routing, budgets, verification, escalation, hedging,
consensus, champion/challenger and audit, tied together as a pure state machine.

The router never performs I/O to backends itself. A driver (the gRPC service, the
discrete-event benchmark, a test) calls:

- `submit(task)` → a `Step` with dispatches to send (or a final result at once);
- `on_answer(dispatch_id, answer)` when a backend replied (or failed);
- `tick()` at or after `next_wakeup()` for timeouts, hedges and leaked reservations.

Every call returns a `Step`: dispatches to start, dispatch ids to cancel, results to
deliver. Time comes from the injectable `clock` (seconds); budget periods use `wall`.

Documented outcomes for bad input (tests/router/test_router.py):

- no backend registered for the task type → FAILED `unknown_task_type`;
- deadline already past on arrival → REJECTED `deadline_passed` (retry_after 0);
- no backend can finish before the deadline → REJECTED `deadline_unreachable`;
- every fitting backend at its limit or window → the task waits for a slot if the
  predicted wait (tasks ahead of it / the backends' completion rate) plus service fits
  its deadline (SAFETY first, then earliest deadline; at most `queue_limit` waiting),
  else REJECTED `overloaded` with retry_after > 0; a waiting task that can no longer
  start in time → REJECTED `queue_timeout`;
- a backend reports a negative, non-finite or absurd cost → its answer is used, the
  reserved worst case is charged, the backend gets a health failure, and the audit
  record says `bad_cost_report`;
- a backend never answers → timeout at the dispatch deadline: limit ×0.9, health
  failure, the elapsed time is charged (bounded by the reservation: GPU time was
  spent), then escalation if time is left, else FAILED `deadline_exceeded`;
- a tenant without a budget → BUDGET_EXHAUSTED `budget:no_budget`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud.router.admission import Admission, AdmissionConfig
from cloud.router.audit import AuditLog
from cloud.router.backends import BackendSpec, Registry
from cloud.router.budgets import BudgetLedger, Denial, Reservation
from cloud.router.champion import ChampionChallenger
from cloud.router.consensus import TrackRecord, Vote, decide
from cloud.router.errors import BudgetError, RouterConfigError
from cloud.router.health import Health, HealthConfig
from cloud.router.limiter import Gradient2, Gradient2Config
from cloud.router.task import Answer, Outcome, Qos, Result, Task
from cloud.router.verifier import ConstraintVerifier, Verdict, Verifier
from cloud.router.windows import WindowTriplet

__all__ = ["CANDIDATE_FIELDS", "BackendState", "Dispatch", "Router", "RouterConfig", "Step"]

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
class _TaskState:
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
class _Open:
    d: Dispatch
    ts: _TaskState
    worst_usd: float
    in_flight_at_send: int
    predicted_s: float


class Router:
    def __init__(
        self,
        registry: Registry,
        ledger: BudgetLedger,
        *,
        config: RouterConfig | None = None,
        clock: Callable[[], float],
        wall: Callable[[], float] | None = None,
        verifier: Verifier | None = None,
        audit: AuditLog | None = None,
        challengers: list[ChampionChallenger] | None = None,
        instance: str | None = None,
    ) -> None:
        # Reservation ids must be unique across replicas sharing one ledger.
        self.instance = instance or uuid.uuid4().hex[:8]
        self.registry = registry
        self.ledger = ledger
        self.cfg = config or RouterConfig()
        self.clock = clock
        self.wall = wall or clock
        self.verifier: Verifier = verifier or ConstraintVerifier()
        self.audit = audit
        self.reservation_ttl_s = reservation_ttl(self.cfg, registry)
        now = clock()
        self.backends = {s.name: BackendState(s, self.cfg, now) for s in registry}
        self.track = TrackRecord()
        self.rng = random.Random(self.cfg.seed)
        self.challengers = {c.task_type: c for c in challengers or []}
        self.preferred: dict[str, str] = {}
        self._ids = itertools.count()
        self._decisions = itertools.count()
        self._pending_audit: list[dict[str, Any]] = []
        self._queue: list[tuple[int, float, int, str]] = []
        self._queued: dict[str, _TaskState] = {}
        self._queued_by_qos: dict[Qos, int] = {q: 0 for q in Qos}
        self._next_drain = now
        self._open: dict[str, _Open] = {}
        self._tasks: dict[str, _TaskState] = {}
        self._timers: list[tuple[float, int, str, str]] = []
        self._hedge_tokens = 1.0
        self._next_expire = now
        self.counters: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=100)

    # ------------------------------------------------------------------ helpers

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _timer(self, at: float, kind: str, ref: str) -> None:
        heapq.heappush(self._timers, (at, next(self._ids), kind, ref))

    def next_wakeup(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def _quality(self, spec: BackendSpec, task_type: str) -> float:
        return spec.quality.get(task_type, 0.0)

    def _fits(self, st: BackendState, task: Task, now: float) -> bool:
        return now + st.predicted_latency(task.work_units) <= task.deadline_at

    def _admits(self, st: BackendState, task: Task, now: float) -> bool:
        worst = st.spec.worst_case_usd(task.work_units, task.deadline_at - now)
        return st.admission.allows(task.qos, st.effective_limit(now), now) and st.windows.admits(
            task.work_units, worst, now
        )

    def _load(self, st: BackendState, now: float) -> float:
        return st.in_flight / st.effective_limit(now)

    def _pick(self, pool: list[BackendState], task_type: str, now: float) -> list[BackendState]:
        """Power-of-two choices on in-flight/limit; the pick first, then the rest."""
        pref = self.preferred.get(task_type)
        for st in pool:
            if st.spec.name == pref:
                return [st, *(s for s in pool if s is not st)]
        if len(pool) <= 1:
            return list(pool)
        a, b = self.rng.sample(pool, 2)
        first = a if self._load(a, now) <= self._load(b, now) else b
        return [first, *(s for s in pool if s is not first)]

    def _finish(self, ts: _TaskState, outcome: Outcome, reason: str, **kw: Any) -> Step:
        now = self.clock()
        ts.done = True
        self._tasks.pop(ts.task.task_id, None)
        res = Result(
            ts.task.task_id,
            outcome,
            reason,
            cost_usd=ts.cost_usd,
            latency_s=now - ts.received_at,
            escalations=ts.escalations,
            **kw,
        )
        self._count(f"{outcome.value}:{reason}" if outcome is not Outcome.OK else "ok")
        res.decision_id = self._record(ts, res)
        step = Step(results=[res], cancels=sorted(ts.outstanding))
        return step

    def _record(self, ts: _TaskState, res: Result) -> str:
        t = ts.task
        summary = {
            "decision_id": f"{self.instance}-{next(self._decisions)}",
            "at": round(self.wall(), 6),
            "task_type": t.task_type,
            "qos": int(t.qos),
            "outcome": res.outcome.value,
            "backend": res.backend,
            "cost_usd": res.cost_usd,
            "latency_ms": round(res.latency_s * 1000, 3),
            "scope": str(t.scope),
            "reason": res.reason,
        }
        self.recent.appendleft(summary)
        if self.audit is None:
            return str(summary["decision_id"])
        body = {
            **summary,
            "task": {
                "id": t.task_id,
                "work_units": t.work_units,
                "deadline_in_s": round(t.deadline_at - ts.received_at, 6),
            },
            "candidates": ts.candidates,
            "attempts": ts.attempts,
            "verifier_score": round(res.verifier_score, 6),
            "escalations": ts.escalations,
            "consensus": res.extra.get("consensus"),
        }
        if t.grant:
            body["grant"] = t.grant
        # Hashing and writing happen in `flush_audit`, off the decision path; the body
        # is sealed (nothing mutates a finished task's state).
        self._pending_audit.append(body)
        return str(summary["decision_id"])

    def note(self, event: dict[str, Any]) -> None:
        """Audit an event that is not a routing decision (e.g. a refused class claim)."""
        self._count(f"event:{event.get('event', '?')}")
        if self.audit is not None:
            self._pending_audit.append({"at": round(self.wall(), 6), **event})

    def flush_audit(self) -> int:
        """Hash-chain and write the decisions recorded since the last flush."""
        if self.audit is None:
            return 0
        pending, self._pending_audit = self._pending_audit, []
        for body in pending:
            try:
                self.audit.append(body)
            except ValueError:  # a NaN/Infinity somewhere: audit it as a string
                self.audit.append(_finite(body))
        self.audit.flush()
        return len(pending)

    # ------------------------------------------------------------------ submit

    def submit(self, task: Task) -> Step:
        now = self.clock()
        ts = _TaskState(task, now, [])
        self._hedge_tokens = min(10.0, self._hedge_tokens + self.cfg.hedge_ratio)
        if not self.registry.capable(task.task_type):
            known = ", ".join(self.registry.task_types())
            ts.candidates = [["known task types: " + known]]
            return self._finish(ts, Outcome.FAILED, "unknown_task_type")
        if task.deadline_at <= now:
            return self._finish(ts, Outcome.REJECTED, "deadline_passed")
        if task.task_id in self._tasks or task.task_id in self._queued:
            return self._finish(ts, Outcome.FAILED, "duplicate_task_id")
        step = self._route(ts, now, queued=False)
        assert step is not None
        return step

    def _route(self, ts: _TaskState, now: float, queued: bool) -> Step | None:
        """Admit and dispatch `ts`, queue it, or finish it. None: still waiting (queued)."""
        task = ts.task
        capable = self.registry.capable(task.task_type)
        ts.candidates = []
        eligible, admitted, wait = [], [], math.inf
        rate = 0.0  # tasks/s the eligible backends complete at their limits
        fastest = math.inf
        floor = self.cfg.quality_floor.get(task.qos, 0.0)
        qos, work, tt = task.qos, task.work_units, task.task_type
        remaining = task.deadline_at - now
        for spec in capable:
            st = self.backends[spec.name]
            st.admission.note_demand(qos, now)
            quality = spec.quality.get(tt, 0.0)
            predicted = st.per_unit_s() * work
            limit = st.effective_limit(now)
            # One compact row per candidate (CANDIDATE_FIELDS), cheap to audit.
            cand: list[Any] = [spec.name, spec.tier, quality, predicted, limit, st.in_flight, ""]
            ts.candidates.append(cand)
            if not st.health.available(now):
                cand[6] = "unhealthy"
                wait = min(wait, max(st.health.cooldown_remaining(now), 0.05))
                continue
            if quality < floor:
                cand[6] = "quality_floor"
                continue
            if predicted > remaining:
                cand[6] = "too_slow"
                continue
            eligible.append(st)
            fastest = min(fastest, predicted)
            rate += limit / max(predicted, 1e-6)
            worst = spec.worst_case_usd(work, remaining)
            if st.admission.allows(qos, limit, now) and st.windows.admits(work, worst, now):
                admitted.append(st)
            else:
                cand[6] = "at_limit"
                wait = min(wait, max(predicted / limit, st.windows.wait_s(work, worst, now)))
        if not eligible:
            self._unqueue(ts)
            if all(c[6] == "unhealthy" for c in ts.candidates):
                return self._finish(
                    ts, Outcome.REJECTED, "no_healthy_backend", retry_after_s=_finite_or(wait, 1.0)
                )
            return self._finish(ts, Outcome.REJECTED, "deadline_unreachable")
        # A vote needs two voices; one backend alone is no better than the robot's own
        # fallback, so a SAFETY task waits (or is rejected) rather than go to one.
        short = task.qos is Qos.SAFETY and len(eligible) >= 2 and len(admitted) < 2
        if not admitted or short:
            # Deadline-aware early rejection: wait only if a slot can free up in time.
            ahead = sum(n for q, n in self._queued_by_qos.items() if q <= qos) + (not queued)
            predicted_wait = ahead / rate if rate > 0 else math.inf
            fits = now + predicted_wait + fastest <= task.deadline_at
            if fits and (queued or len(self._queued) < self.cfg.queue_limit):
                if not queued:
                    self._enqueue(ts, task.deadline_at - fastest)
                    return Step()
                return None
            self._unqueue(ts)
            return self._finish(
                ts, Outcome.REJECTED, "overloaded", retry_after_s=_finite_or(wait, 0.1)
            )
        self._unqueue(ts)
        self._tasks[task.task_id] = ts
        self._timer(task.deadline_at, "deadline", task.task_id)
        if task.qos is Qos.SAFETY and len(eligible) >= 2:
            return self._start_consensus(ts, admitted, now)
        min_tier = admitted[0].spec.tier
        first_tier = [s for s in admitted if s.spec.tier == min_tier]
        order = self._pick(first_tier, task.task_type, now) + [
            s for s in admitted if s.spec.tier != min_tier
        ]
        step = Step()
        denial = self._try_dispatch(ts, order, "primary", now, step, cheapest=capable[0].tier)
        if step.dispatches:
            d = step.dispatches[0]
            st = self.backends[d.backend]
            step.extend(self._maybe_mirror(ts, st, now))
            p95 = st.p95()
            if p95 is not None and len(st.latencies) >= self.cfg.hedge_min_samples:
                self._timer(now + p95, "hedge", task.task_id)
            return step
        return self._budget_failure(ts, denial)

    # ------------------------------------------------------------------ waiting queue

    def _enqueue(self, ts: _TaskState, latest_start: float) -> None:
        self._queued[ts.task.task_id] = ts
        self._queued_by_qos[ts.task.qos] += 1
        heapq.heappush(
            self._queue, (int(ts.task.qos), ts.task.deadline_at, next(self._ids), ts.task.task_id)
        )
        self._timer(latest_start, "queue_expire", ts.task.task_id)
        self._count("queued")

    def _unqueue(self, ts: _TaskState) -> None:
        if self._queued.pop(ts.task.task_id, None) is not None:
            self._queued_by_qos[ts.task.qos] -= 1  # its heap entry is skipped lazily

    def _drain(self, now: float, budget: int = 4) -> Step:
        """Try the first queued tasks (SAFETY first, then earliest deadline)."""
        step = Step()
        keep = []
        while self._queue and budget > 0:
            item = heapq.heappop(self._queue)
            ts = self._queued.get(item[3])
            if ts is None:
                continue
            budget -= 1
            out = self._route(ts, now, queued=True)
            if out is None:
                keep.append(item)
            else:
                step.extend(out)
        for item in keep:
            heapq.heappush(self._queue, item)
        return step

    def _budget_failure(self, ts: _TaskState, denial: tuple[Denial, str]) -> Step:
        kind, scope = denial
        ts.candidates.append(["budget_denied", kind.value, scope])
        return self._finish(ts, Outcome.BUDGET_EXHAUSTED, f"budget:{kind.value}")

    def _try_dispatch(
        self,
        ts: _TaskState,
        order: list[BackendState],
        purpose: str,
        now: float,
        step: Step,
        cheapest: int,
        attempts: int = 3,
    ) -> tuple[Denial, str]:
        """Reserve budget and dispatch to the first backend in `order` that the budget allows."""
        task = ts.task
        denial: tuple[Denial, str] = (Denial.HARD, "")
        for st in order[:attempts]:
            worst = st.spec.worst_case_usd(task.work_units, task.deadline_at - now)
            did = f"{task.task_id}#{self.instance}.{next(self._ids)}"
            # The reservation lives exactly as long as the call can: until the dispatch
            # deadline (see `_send`) plus the grace, never beyond what the ledger holds.
            window = min(task.deadline_at, now + st.spec.timeout_s) - now
            hold = min(window + self.cfg.reservation_grace_s, self.reservation_ttl_s)
            wall = self.wall()
            out = self.ledger.reserve(
                Reservation(
                    did,
                    task.scope.chain(),
                    worst,
                    task.work_units,
                    task.qos is Qos.SAFETY,
                    st.spec.tier <= cheapest,
                    wall + hold,
                ),
                wall,
            )
            if not out.ok:
                denial = (out.denial, out.scope)
                if out.denial is Denial.NO_BUDGET:
                    return denial
                continue
            step.dispatches.append(self._send(ts, st, did, worst, purpose, now))
            return (Denial.NONE, "")
        return denial

    def _send(
        self, ts: _TaskState, st: BackendState, did: str, worst: float, purpose: str, now: float
    ) -> Dispatch:
        task = ts.task
        d = Dispatch(
            did, task, st.spec.name, now, min(task.deadline_at, now + st.spec.timeout_s), purpose
        )
        st.admission.acquire(task.qos)
        st.health.on_dispatch(now)
        st.windows.take(task.work_units, worst, now)
        self._open[did] = _Open(d, ts, worst, st.in_flight, st.predicted_latency(task.work_units))
        ts.outstanding.add(did)
        ts.tried.append(st.spec.name)
        ts.attempts.append(
            {"id": did, "backend": st.spec.name, "purpose": purpose, "reserved_usd": worst}
        )
        self._timer(d.deadline_at, "timeout", did)
        self._count(f"dispatch:{purpose}")
        return d

    def _start_consensus(self, ts: _TaskState, admitted: list[BackendState], now: float) -> Step:
        ts.consensus = []
        step = Step()
        chosen: list[BackendState] = []
        tiers: set[int] = set()
        # Diverse first: one per tier, cheapest first, then fill up by load.
        for st in admitted:
            if st.spec.tier not in tiers:
                chosen.append(st)
                tiers.add(st.spec.tier)
        chosen += sorted((s for s in admitted if s not in chosen), key=lambda s: self._load(s, now))
        denial: tuple[Denial, str] = (Denial.HARD, "")
        cheapest = admitted[0].spec.tier
        for st in chosen:
            if len(step.dispatches) >= self.cfg.consensus_k:
                break
            denial = self._try_dispatch(ts, [st], "consensus", now, step, cheapest, attempts=1)
            if denial[0] is Denial.NO_BUDGET:
                break
        if len(step.dispatches) >= 2 or (step.dispatches and len(admitted) == 1):
            return step
        if step.dispatches:
            # Too few answers possible for a vote: wait for the one sent, then judge alone.
            ts.consensus = None
            return step
        return self._budget_failure(ts, denial)

    # ------------------------------------------------------------------ cancellation

    def cancel(self, task_id: str) -> Step:
        """The caller gave up on `task_id`: its waiting slot or its calls are dropped, their
        reservations released (nothing more is charged; what was settled stays), and the
        key is free for a retry. Unknown or finished: nothing to do."""
        ts = self._queued.get(task_id)
        if ts is not None:
            self._unqueue(ts)
            return self._finish(ts, Outcome.FAILED, "cancelled")
        ts = self._tasks.get(task_id)
        if ts is None or ts.done:
            return Step()
        for did in sorted(ts.outstanding):
            o = self._open.pop(did, None)
            if o is None:
                continue
            st = self.backends[o.d.backend]
            st.admission.release(o.d.task.qos)
            self._refund(o, st)
            for a in ts.attempts:
                if a["id"] == did:
                    a["status"] = "cancelled"
        return self._finish(ts, Outcome.FAILED, "cancelled")

    def open_dispatches(self) -> dict[str, float]:
        """Dispatch id → the USD reserved for it, for every call not yet settled."""
        return {did: o.worst_usd for did, o in self._open.items()}

    # ------------------------------------------------------------------ answers

    def on_answer(self, dispatch_id: str, answer: Answer) -> Step:
        step = self._on_answer(dispatch_id, answer)
        if self._queued:  # a slot may have freed up for a waiting task
            step.extend(self._drain(self.clock(), budget=1))
        return step

    def _on_answer(self, dispatch_id: str, answer: Answer) -> Step:
        now = self.clock()
        o = self._open.pop(dispatch_id, None)
        if o is None:
            return Step()  # late or unknown: already timed out or never sent
        st = self.backends[o.d.backend]
        task = o.d.task
        st.admission.release(task.qos)
        st.calls += 1
        latency = now - o.d.sent_at
        if answer.overloaded:
            st.limiter.on_drop()
            st.windows.on_overload()
            st.health.on_failure(now, pushback=True)
        elif answer.error == "cancelled":
            pass  # we gave up on it; says nothing about the backend
        elif answer.error in TIMEOUT_ERRORS:
            # Gradient2's drop: multiplicative back-off; the latency SLO was breached.
            st.limiter.on_drop()
            st.windows.on_slo_breach()
            st.failures += 1
            st.health.on_failure(now)
        elif answer.error:
            st.failures += 1
            st.health.on_failure(now)
        else:
            st.limiter.on_sample(latency, task.work_units, o.in_flight_at_send, now)
            st.record_latency(latency)
            st.windows.on_success()
            if latency > self.cfg.slo_factor * o.predicted_s:
                st.windows.on_slo_breach()
        cost, bad = self._settle(o, st, answer, latency)
        if answer.ok and not bad and o.d.purpose != "mirror":
            st.health.on_success(now)
        # A late answer (after the decision) must not alter the sealed audit record.
        attempt = (
            None if o.ts.done else next((a for a in o.ts.attempts if a["id"] == dispatch_id), None)
        )
        if attempt is not None:
            attempt.update(
                latency_s=round(latency, 6),
                cost_usd=cost,
                status="overloaded" if answer.overloaded else answer.error or "ok",
            )
            if bad:
                attempt["anomaly"] = "bad_cost_report"
        if o.d.purpose == "mirror":
            return self._on_mirror(o, answer)
        ts = o.ts
        ts.cost_usd += cost
        ts.outstanding.discard(dispatch_id)
        if ts.done:
            return Step()
        verdict = (
            self.verifier.verify(task, answer)
            if answer.ok
            else Verdict(False, 0.0, "overloaded" if answer.overloaded else answer.error)
        )
        if attempt is not None:
            attempt["verdict"] = {"hard_ok": verdict.hard_ok, "score": round(verdict.score, 4)}
        if o.d.purpose == "primary" and ts.pair is not None:
            ts.pair[0] = self._accepted(verdict)
            self._record_pair(task.task_type, ts.pair)
        if ts.consensus is not None:
            q = self._quality(st.spec, task.task_type)
            ts.consensus.append(
                Vote(
                    st.spec.name,
                    answer,
                    verdict,
                    self.track.log_odds(st.spec.name, task.task_type, q),
                )
            )
            if ts.outstanding:
                return Step()
            return self._conclude_consensus(ts)
        if verdict.hard_ok and verdict.score >= self.cfg.accept_score:
            self.track.record(st.spec.name, task.task_type, True)
            return self._finish(
                ts,
                Outcome.OK,
                "accepted",
                backend=st.spec.name,
                answer=answer,
                verifier_score=verdict.score,
            )
        if verdict.hard_ok and verdict.score >= self.cfg.grey_low and ts.best is None:
            ts.best = (st.spec.name, answer, verdict)
            if self._grey_consensus(ts, st, answer, verdict, now):
                return Step(dispatches=self._last_dispatches(ts))
        if answer.ok:
            self.track.record(st.spec.name, task.task_type, False)
        if ts.outstanding:
            return Step()  # a hedge is still running
        return self._escalate(ts, now, verdict, failed=not answer.ok)

    def _last_dispatches(self, ts: _TaskState) -> list[Dispatch]:
        return [self._open[d].d for d in ts.outstanding if d in self._open]

    def _grey_consensus(
        self, ts: _TaskState, st: BackendState, answer: Answer, verdict: Verdict, now: float
    ) -> bool:
        if ts.task.qos is Qos.SAFETY or ts.outstanding:
            return False
        others = [
            s
            for spec in self.registry.capable(ts.task.task_type)
            if (s := self.backends[spec.name]) is not st
            and s.health.available(now)
            and self._fits(s, ts.task, now)
            and self._admits(s, ts.task, now)
        ]
        if not others:
            return False
        step = Step()
        for s in others[: self.cfg.consensus_k - 1]:
            self._try_dispatch(ts, [s], "consensus", now, step, others[0].spec.tier, attempts=1)
        if not step.dispatches:
            return False
        q = self._quality(st.spec, ts.task.task_type)
        ts.consensus = [
            Vote(
                st.spec.name,
                answer,
                verdict,
                self.track.log_odds(st.spec.name, ts.task.task_type, q),
            )
        ]
        return True

    def _conclude_consensus(self, ts: _TaskState) -> Step:
        assert ts.consensus is not None
        votes = ts.consensus
        res = decide(votes, self.cfg.consensus_tolerance, self.cfg.consensus_majority)
        info = {
            "votes": [
                {
                    "backend": v.backend,
                    "hard_ok": v.verdict.hard_ok,
                    "score": round(v.verdict.score, 4),
                    "weight": round(v.weight, 4),
                }
                for v in votes
            ],
            "agreeing": list(res.agreeing),
            "share": round(res.weight_share, 4),
            "reason": res.reason,
        }
        if res.winner is None:
            return self._finish(ts, Outcome.NO_CONSENSUS, "no_consensus", extra={"consensus": info})
        for v in votes:
            self.track.record(v.backend, ts.task.task_type, v.backend in res.agreeing)
        w = res.winner
        return self._finish(
            ts,
            Outcome.OK,
            "consensus",
            backend=w.backend,
            answer=w.answer,
            verifier_score=w.verdict.score,
            extra={"consensus": info},
        )

    def _escalate(self, ts: _TaskState, now: float, verdict: Verdict, failed: bool) -> Step:
        reason = "backend_failed" if failed else "verifier_rejected"
        if ts.escalations < self.cfg.max_escalations:
            top = max(self.backends[b].spec.tier for b in ts.tried)
            pool = [
                s
                for spec in self.registry.capable(ts.task.task_type)
                if spec.tier > top
                and (s := self.backends[spec.name]).health.available(now)
                and self._fits(s, ts.task, now)
                and self._admits(s, ts.task, now)
            ]
            if not pool:  # same tier, another backend (e.g. after a failure)
                pool = [
                    s
                    for spec in self.registry.capable(ts.task.task_type)
                    if spec.name not in ts.tried
                    and spec.tier >= top
                    and (s := self.backends[spec.name]).health.available(now)
                    and self._fits(s, ts.task, now)
                    and self._admits(s, ts.task, now)
                ]
            if pool:
                step = Step()
                self._try_dispatch(ts, pool, "escalation", now, step, -1)
                if step.dispatches:
                    ts.escalations += 1
                    return step
        return self._finish(ts, Outcome.FAILED, reason, verifier_score=verdict.score)

    def _settle(
        self, o: _Open, st: BackendState, answer: Answer, latency: float
    ) -> tuple[float, bool]:
        """Commit the actual cost (bounded by the reservation) or refund on failure."""
        if answer.error in TIMEOUT_ERRORS:
            # The backend worked until the deadline and bills for it (GPU time is
            # spent whether or not we waited): charge the elapsed time, never more than
            # the reservation.
            cost = min(st.spec.price.cost(o.d.task.work_units, latency), o.worst_usd)
            st.windows.usd.refund(o.worst_usd - cost)
            self._commit(o, cost, o.d.task.work_units)
            return cost, False
        if not answer.ok:
            self._refund(o, st)
            return 0.0, False
        declared = o.d.task.work_units
        work = declared if answer.work_units is None else answer.work_units
        gpu_s = latency if answer.gpu_s is None else answer.gpu_s
        bad = not (
            math.isfinite(work)
            and 0 <= work <= declared * ABSURD_WORK_FACTOR
            and math.isfinite(gpu_s)
            and 0 <= gpu_s <= st.spec.timeout_s
        )
        if bad:
            st.bad_cost_reports += 1
            st.health.on_failure(self.clock())
            cost = o.worst_usd
            work = declared
        else:
            cost = min(st.spec.price.cost(work, gpu_s), o.worst_usd)
        # The USD window was charged the worst case at dispatch: give back the rest.
        st.windows.usd.refund(o.worst_usd - cost)
        self._commit(o, cost, min(work, declared))
        return cost, bad

    def _commit(self, o: _Open, usd: float, work_units: float) -> None:
        """Charge a finished call. A reservation the ledger no longer holds (expired by a
        replica whose clock ran ahead) is still billed: the backend did the work."""
        try:
            self.ledger.commit(o.d.dispatch_id, usd, work_units)
        except BudgetError:
            self.ledger.bill(o.d.task.scope.chain(), usd, work_units, self.wall())
            self._count("late_bill")

    def _refund(self, o: _Open, st: BackendState) -> None:
        """Release a call's reservation: it failed, or its caller gave up."""
        with contextlib.suppress(BudgetError):  # already expired: nothing left to refund
            self.ledger.release(o.d.dispatch_id)
        st.windows.usd.refund(o.worst_usd)

    # ------------------------------------------------------------------ champion/challenger

    def _maybe_mirror(self, ts: _TaskState, st: BackendState, now: float) -> Step:
        cc = self.challengers.get(ts.task.task_type)
        if cc is None or cc.promoted or st.spec.name == cc.challenger:
            return Step()
        if self.rng.random() >= cc.mirror_share:
            return Step()
        ch = self.backends.get(cc.challenger)
        if ch is None or not ch.health.available(now) or not self._admits(ch, ts.task, now):
            return Step()
        step = Step()
        mirror_ts = _TaskState(ts.task, now, [])
        ts.pair = mirror_ts.pair = [None, None]
        self._try_dispatch(mirror_ts, [ch], "mirror", now, step, -1, attempts=1)
        if not step.dispatches:
            ts.pair = None
        return step

    def _record_pair(self, task_type: str, pair: list[float | None]) -> None:
        cc = self.challengers.get(task_type)
        champ, chal = pair
        if cc is None or champ is None or chal is None:
            return
        if cc.record(champ, chal):
            self.preferred[cc.task_type] = cc.champion
            self._count("promotion")
            if self.audit is not None:
                self._pending_audit.append(
                    {
                        "event": "promotion",
                        "at": round(self.wall(), 6),
                        "task_type": cc.task_type,
                        "champion": cc.champion,
                        "previous": cc.challenger,
                        "wins": cc.wins,
                        "losses": cc.losses,
                    }
                )

    def _accepted(self, v: Verdict) -> float:
        return 1.0 if v.hard_ok and v.score >= self.cfg.accept_score else 0.0

    def _on_mirror(self, o: _Open, answer: Answer) -> Step:
        v = self.verifier.verify(o.d.task, answer) if answer.ok else Verdict(False, 0.0)
        if o.ts.pair is not None:
            o.ts.pair[1] = self._accepted(v)
            self._record_pair(o.d.task.task_type, o.ts.pair)
        return Step()

    # ------------------------------------------------------------------ timers

    def tick(self) -> Step:
        now = self.clock()
        step = Step()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, ref = heapq.heappop(self._timers)
            if kind == "timeout":
                step.extend(self._on_timeout(ref, now))
            elif kind == "deadline":
                ts = self._tasks.get(ref)
                if ts is not None and not ts.done:
                    if ts.consensus:
                        step.extend(self._conclude_consensus(ts))
                    else:
                        step.extend(self._finish(ts, Outcome.FAILED, "deadline_exceeded"))
            elif kind == "hedge":
                step.extend(self._on_hedge(ref, now))
            elif kind == "queue_expire":
                ts = self._queued.get(ref)
                if ts is not None:
                    self._unqueue(ts)
                    step.extend(self._finish(ts, Outcome.REJECTED, "queue_timeout"))
        if self._queued and now >= self._next_drain:
            # Slots free on answers (drained there); here only what time frees: windows
            # refilling, cool-downs ending. At most every `drain_interval_s`.
            self._next_drain = now + self.cfg.drain_interval_s
            step.extend(self._drain(now))
        if now >= self._next_expire:
            self._next_expire = now + 1.0
            self.ledger.expire(self.wall())
        return step

    def _on_timeout(self, dispatch_id: str, now: float) -> Step:
        o = self._open.get(dispatch_id)
        if o is None:
            return Step()
        return self.on_answer(dispatch_id, Answer(error="timeout"))

    def _on_hedge(self, task_id: str, now: float) -> Step:
        ts = self._tasks.get(task_id)
        if ts is None or ts.done or ts.hedged or ts.consensus is not None or not ts.outstanding:
            return Step()
        if self._hedge_tokens < 1.0:
            return Step()
        top = max(self.backends[b].spec.tier for b in ts.tried)
        pool = [
            s
            for spec in self.registry.capable(ts.task.task_type)
            if spec.tier > top
            and (s := self.backends[spec.name]).health.available(now)
            and self._fits(s, ts.task, now)
            and self._admits(s, ts.task, now)
        ]
        if not pool:
            return Step()
        step = Step()
        self._try_dispatch(ts, pool, "hedge", now, step, -1, attempts=1)
        if step.dispatches:
            self._hedge_tokens -= 1.0
            ts.hedged = True
        return step

    # ------------------------------------------------------------------ stats

    def stats(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "name": st.spec.name,
                "tier": st.spec.tier,
                "limit": st.limiter.limit,
                "in_flight": st.in_flight,
                "work_units_per_s": st.windows.work.rate,
                "usd_per_s": st.windows.usd.rate,
                "healthy": st.health.available(now),
                "cooldown_remaining_s": st.health.cooldown_remaining(now),
                "p95_latency_s": st.p95() or 0.0,
            }
            for st in self.backends.values()
        ]


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


def _finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: audit them as strings rather than fail the decision."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
