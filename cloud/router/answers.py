"""What the router does when a backend answers, fails or times out: verify, accept,
escalate, hedge, vote; settle the call's reservation (commit, refund, late bill); and
the champion/challenger mirror."""

from __future__ import annotations

import contextlib
import math

from cloud.router.consensus import Vote, decide
from cloud.router.core import RouterCore
from cloud.router.errors import BudgetError
from cloud.router.state import (
    ABSURD_WORK_FACTOR,
    TIMEOUT_ERRORS,
    BackendState,
    Dispatch,
    OpenCall,
    Step,
    TaskState,
)
from cloud.router.task import Answer, Outcome, Qos
from cloud.router.verifier import Verdict

__all__ = ["AnswerHandling"]


class AnswerHandling(RouterCore):
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
        if self.selector is not None and answer.ok and o.d.purpose in ("primary", "escalation"):
            self.selector.record(task, st.spec.name, self._accepted(verdict) > 0)
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

    def _last_dispatches(self, ts: TaskState) -> list[Dispatch]:
        return [self._open[d].d for d in ts.outstanding if d in self._open]

    def _grey_consensus(
        self, ts: TaskState, st: BackendState, answer: Answer, verdict: Verdict, now: float
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

    def _conclude_consensus(self, ts: TaskState) -> Step:
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

    def _escalate(self, ts: TaskState, now: float, verdict: Verdict, failed: bool) -> Step:
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
        self, o: OpenCall, st: BackendState, answer: Answer, latency: float
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

    def _commit(self, o: OpenCall, usd: float, work_units: float) -> None:
        """Charge a finished call. A reservation the ledger no longer holds (expired by a
        replica whose clock ran ahead) is still billed: the backend did the work."""
        try:
            self.ledger.commit(o.d.dispatch_id, usd, work_units)
        except BudgetError:
            self.ledger.bill(o.d.task.scope.chain(), usd, work_units, self.wall())
            self._count("late_bill")

    def _refund(self, o: OpenCall, st: BackendState) -> None:
        """Release a call's reservation: it failed, or its caller gave up."""
        with contextlib.suppress(BudgetError):  # already expired: nothing left to refund
            self.ledger.release(o.d.dispatch_id)
        st.windows.usd.refund(o.worst_usd)

    def _maybe_mirror(self, ts: TaskState, st: BackendState, now: float) -> Step:
        cc = self.challengers.get(ts.task.task_type)
        if cc is None or cc.promoted or st.spec.name == cc.challenger:
            return Step()
        if self.rng.random() >= cc.mirror_share:
            return Step()
        ch = self.backends.get(cc.challenger)
        if ch is None or not ch.health.available(now) or not self._admits(ch, ts.task, now):
            return Step()
        step = Step()
        mirror_ts = TaskState(ts.task, now, [])
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

    def _on_mirror(self, o: OpenCall, answer: Answer) -> Step:
        v = self.verifier.verify(o.d.task, answer) if answer.ok else Verdict(False, 0.0)
        if o.ts.pair is not None:
            o.ts.pair[1] = self._accepted(v)
            self._record_pair(o.d.task.task_type, o.ts.pair)
        return Step()

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
