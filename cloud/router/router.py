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

import heapq
import math
from typing import Any

from cloud.router.answers import AnswerHandling
from cloud.router.budgets import Denial
from cloud.router.state import (
    CANDIDATE_FIELDS,
    BackendState,
    Dispatch,
    RouterConfig,
    Step,
    TaskState,
    finite_or,
)
from cloud.router.task import Outcome, Qos, Task

__all__ = ["CANDIDATE_FIELDS", "BackendState", "Dispatch", "Router", "RouterConfig", "Step"]


class Router(AnswerHandling):
    def submit(self, task: Task) -> Step:
        now = self.clock()
        ts = TaskState(task, now, [])
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

    def _route(self, ts: TaskState, now: float, queued: bool) -> Step | None:
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
            if quality < floor and not (
                self.selector is not None and self.selector.clears_floor(task, spec.name, floor)
            ):
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
                    ts, Outcome.REJECTED, "no_healthy_backend", retry_after_s=finite_or(wait, 1.0)
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
                ts, Outcome.REJECTED, "overloaded", retry_after_s=finite_or(wait, 0.1)
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
        if self.selector is not None:
            order = self.selector.order(task, order)
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

    def _start_consensus(self, ts: TaskState, admitted: list[BackendState], now: float) -> Step:
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
