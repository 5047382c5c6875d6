"""The router's shared machinery: its state, reservations and dispatch, the waiting
queue, finishing a task and recording it for the audit log. `cloud.router.answers`
adds what happens when a backend answers, `cloud.router.router` admission and timers.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from cloud.router.audit import AuditLog
from cloud.router.backends import BackendSpec, Registry
from cloud.router.budgets import BudgetLedger, Denial, Reservation
from cloud.router.champion import ChampionChallenger
from cloud.router.consensus import TrackRecord
from cloud.router.learning import LearnedStart
from cloud.router.state import (
    BackendState,
    Dispatch,
    OpenCall,
    RouterConfig,
    Step,
    TaskState,
    finite,
    reservation_ttl,
)
from cloud.router.task import Outcome, Qos, Result, Task
from cloud.router.verifier import ConstraintVerifier, Verifier

__all__ = ["RouterCore"]


class RouterCore:
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
        selector: LearnedStart | None = None,
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
        self.selector = selector
        """Where a task's chain starts (None: the cheapest fitting tier)."""
        self.preferred: dict[str, str] = {}
        self._ids = itertools.count()
        self._decisions = itertools.count()
        self._pending_audit: list[dict[str, Any]] = []
        self._queue: list[tuple[int, float, int, str]] = []
        self._queued: dict[str, TaskState] = {}
        self._queued_by_qos: dict[Qos, int] = {q: 0 for q in Qos}
        self._next_drain = now
        self._open: dict[str, OpenCall] = {}
        self._tasks: dict[str, TaskState] = {}
        self._timers: list[tuple[float, int, str, str]] = []
        self._hedge_tokens = 1.0
        self._next_expire = now
        self.counters: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=100)

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

    def _finish(self, ts: TaskState, outcome: Outcome, reason: str, **kw: Any) -> Step:
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

    def _record(self, ts: TaskState, res: Result) -> str:
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
                self.audit.append(finite(body))
        self.audit.flush()
        return len(pending)

    def _enqueue(self, ts: TaskState, latest_start: float) -> None:
        self._queued[ts.task.task_id] = ts
        self._queued_by_qos[ts.task.qos] += 1
        heapq.heappush(
            self._queue, (int(ts.task.qos), ts.task.deadline_at, next(self._ids), ts.task.task_id)
        )
        self._timer(latest_start, "queue_expire", ts.task.task_id)
        self._count("queued")

    def _unqueue(self, ts: TaskState) -> None:
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

    def _budget_failure(self, ts: TaskState, denial: tuple[Denial, str]) -> Step:
        kind, scope = denial
        ts.candidates.append(["budget_denied", kind.value, scope])
        return self._finish(ts, Outcome.BUDGET_EXHAUSTED, f"budget:{kind.value}")

    def _try_dispatch(
        self,
        ts: TaskState,
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
        self, ts: TaskState, st: BackendState, did: str, worst: float, purpose: str, now: float
    ) -> Dispatch:
        task = ts.task
        d = Dispatch(
            did, task, st.spec.name, now, min(task.deadline_at, now + st.spec.timeout_s), purpose
        )
        st.admission.acquire(task.qos)
        st.health.on_dispatch(now)
        st.windows.take(task.work_units, worst, now)
        self._open[did] = OpenCall(
            d, ts, worst, st.in_flight, st.predicted_latency(task.work_units)
        )
        ts.outstanding.add(did)
        ts.tried.append(st.spec.name)
        ts.attempts.append(
            {"id": did, "backend": st.spec.name, "purpose": purpose, "reserved_usd": worst}
        )
        self._timer(d.deadline_at, "timeout", did)
        self._count(f"dispatch:{purpose}")
        return d

    def open_dispatches(self) -> dict[str, float]:
        """Dispatch id → the USD reserved for it, for every call not yet settled."""
        return {did: o.worst_usd for did, o in self._open.items()}

    def _route(self, ts: TaskState, now: float, queued: bool) -> Step | None:
        raise NotImplementedError  # admission lives in `Router`
