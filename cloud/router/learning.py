"""A router that learns which backend suffices: a contextual bandit over task features
and verifier outcomes, choosing where a task's escalation chain starts.

Today's rule starts every task at the cheapest fitting tier and escalates when the
verifier rejects. When a context (task type, class, size — or any features the
operator's `features` function extracts) shows that the cheap tier is rarely accepted,
starting there only adds its cost and its latency. `LearnedStart` keeps, per context
and backend, how often the verifier accepted that backend's answer, and predicts the
cost per accepted answer of a chain starting at each tier:

    cost_i = c_i + (1 − p_i) · cost_{i+1},   accepted_i = p_i + (1 − p_i) · accepted_{i+1}

with `c_i` the backend's price for the task and `p_i` its posterior acceptance rate
(Beta prior centred on its declared quality). The cheapest tier stays the champion;
a later start (the challenger) is promoted for a context only on supported evidence —
the champion/challenger guard: every skipped backend has `min_samples` outcomes in
that context and, even at the Wilson upper bound of its acceptance rate (z = 1.96),
starting there costs more per accepted answer. A share `explore` of tasks still starts
at the cheapest tier, so a backend that got better is seen again.

The same evidence lets a backend whose declared quality (one number per task type) is
below a class's floor serve the contexts where it is in fact good enough: once the
Wilson lower bound of its accepted share there reaches the floor (`clears_floor`).
SAFETY tasks keep their floors and their consensus and are never re-routed here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from cloud.router.champion import wilson_lower_bound
from cloud.router.state import BackendState
from cloud.router.task import Qos, Task

__all__ = ["LearnedStart", "default_features"]

Features = Callable[[Task], Hashable]


def default_features(task: Task) -> Hashable:
    """Task type, class and size (work units, by powers of two)."""
    return (task.task_type, int(task.qos), round(math.log2(max(task.work_units, 1e-3))))


@dataclass
class _Arm:
    accepted: int = 0
    n: int = 0


class LearnedStart:
    def __init__(
        self,
        features: Features = default_features,
        *,
        min_samples: int = 30,
        explore: float = 0.05,
        trial: float = 0.2,
        prior_n: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.features = features
        self.min_samples = min_samples
        self.explore = explore
        self.trial = trial
        self.prior_n = prior_n
        self.rng = random.Random(seed)
        self.arms: dict[tuple[Hashable, str], _Arm] = {}
        self.promoted = 0
        """Tasks whose chain started above the cheapest tier on the learned evidence."""
        self.decisions = 0
        self.cleared = 0
        """Times a backend below a class's floor was let serve (evidence or trial)."""

    def record(self, task: Task, backend: str, accepted: bool) -> None:
        """A verifier outcome for `backend`'s answer to `task`."""
        arm = self.arms.setdefault((self.features(task), backend), _Arm())
        arm.n += 1
        arm.accepted += accepted

    def clears_floor(self, task: Task, backend: str, floor: float) -> bool:
        """May `backend`, declared below the class's quality floor, serve this task?

        Yes once its accepted share in the task's context has a Wilson lower bound at or
        above the floor (`min_samples` outcomes at least); until then a share `trial`
        of tasks tries it (the verifier still judges, a rejection escalates). Never
        for SAFETY."""
        if task.qos is Qos.SAFETY:
            return False
        arm = self.arms.get((self.features(task), backend), _Arm())
        if arm.n >= self.min_samples:
            ok = wilson_lower_bound(arm.accepted, arm.n) >= floor
        else:
            ok = self.rng.random() < self.trial
        self.cleared += ok
        return ok

    def _p(self, ctx: Hashable, st: BackendState, task: Task, optimistic: bool) -> float:
        arm = self.arms.get((ctx, st.spec.name), _Arm())
        if optimistic:
            return 1.0 - wilson_lower_bound(arm.n - arm.accepted, arm.n) if arm.n else 1.0
        prior = st.spec.quality.get(task.task_type, 0.5)
        return (arm.accepted + prior * self.prior_n) / (arm.n + self.prior_n)

    @staticmethod
    def _per_accepted(costs: Sequence[float], ps: Sequence[float], start: int) -> float:
        cost, ok = 0.0, 0.0
        for c, p in zip(reversed(costs[start:]), reversed(ps[start:]), strict=True):
            cost, ok = c + (1.0 - p) * cost, p + (1.0 - p) * ok
        return cost / ok if ok > 0 else math.inf

    def order(self, task: Task, order: list[BackendState]) -> list[BackendState]:
        """`order` (cheapest tier first) with the learned start moved to the front."""
        self.decisions += 1
        chain: list[BackendState] = []
        for st in sorted(order, key=lambda s: s.spec.tier):
            if not chain or st.spec.tier > chain[-1].spec.tier:
                chain.append(st)
        if len(chain) < 2 or self.rng.random() < self.explore:
            return order
        ctx = self.features(task)
        costs = [
            st.spec.price.cost(task.work_units, st.predicted_latency(task.work_units))
            for st in chain
        ]
        ps = [self._p(ctx, st, task, optimistic=False) for st in chain]
        per = [self._per_accepted(costs, ps, i) for i in range(len(chain))]
        best = min(range(len(chain)), key=lambda i: (per[i], i))
        if best == 0:
            return order
        # Guard: each skipped backend is worse even at its optimistic acceptance rate.
        for j in range(best):
            arm = self.arms.get((ctx, chain[j].spec.name), _Arm())
            if arm.n < self.min_samples:
                return order
            opt = list(ps)
            opt[j] = self._p(ctx, chain[j], task, optimistic=True)
            if self._per_accepted(costs, opt, j) <= self._per_accepted(costs, opt, best):
                return order
        self.promoted += 1
        start = chain[best]
        return [start, *(s for s in order if s is not start and s.spec.tier >= start.spec.tier)]
