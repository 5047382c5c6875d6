"""Small deterministic set-ups shared by the router tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from cloud.router import (
    BackendSpec,
    Budget,
    MemoryLedger,
    PriceModel,
    Qos,
    Registry,
    Result,
    Router,
    RouterConfig,
    Scope,
)
from cloud.router.simulation import (
    EventLoop,
    RouterPolicy,
    SimBackend,
    SimBackendSpec,
    SimVerifier,
    Truth,
    make_task,
)

SCOPE = Scope("acme", "lab", "r1")


def spec(
    name: str,
    tier: int = 0,
    types: Iterable[str] = ("plan",),
    capacity: int = 4,
    quality: float = 0.9,
    per_call: float = 0.001,
    latency: float = 0.05,
    timeout_s: float = 30.0,
) -> BackendSpec:
    return BackendSpec(
        name,
        tier,
        frozenset(types),
        PriceModel(per_call_usd=per_call),
        capacity=capacity,
        quality={t: quality for t in types},
        latency_s_per_work_unit=latency,
        timeout_s=timeout_s,
    )


class Sim:
    """A router driving simulated backends on a simulated clock."""

    def __init__(
        self,
        backends: list[SimBackendSpec],
        budget_usd: float = 1e9,
        config: RouterConfig | None = None,
        seed: int = 0,
        **router_kw: object,
    ) -> None:
        self.loop = EventLoop()
        self.truth = Truth()
        self.rng = random.Random(seed)
        self.ledger = MemoryLedger()
        self.ledger.set_budget(Budget("acme", budget_usd))
        self.router = Router(
            Registry(b.spec for b in backends),
            self.ledger,
            config=config or RouterConfig(seed=seed),
            clock=self.loop.clock,
            **{"verifier": SimVerifier(self.truth, seed + 1), **router_kw},  # type: ignore[arg-type]
        )
        self.sims = {
            b.spec.name: SimBackend(b, self.loop, self.truth, seed + 10 + i)
            for i, b in enumerate(backends)
        }
        self.policy = RouterPolicy(self.router, self.loop, self.sims)
        self.results: list[Result] = []
        self._n = 0

    def submit(
        self,
        task_type: str = "plan",
        qos: Qos = Qos.INTERACTIVE,
        deadline_s: float = 2.0,
        work_units: float = 1.0,
        scope: Scope = SCOPE,
        done: Callable[[Result], None] | None = None,
    ) -> str:
        self._n += 1
        tid = f"t{self._n}"
        task = make_task(
            self.rng, self.truth, tid, task_type, qos, self.loop.now, deadline_s, work_units, scope
        )
        self.policy.submit(task, done or self.results.append)
        return tid

    def poisson(self, rate: float, until: float, **kw: object) -> None:
        """Open-loop arrivals at `rate` per second until simulated time `until`."""

        def arrive() -> None:
            if self.loop.now >= until:
                return
            self.submit(**kw)  # type: ignore[arg-type]
            self.loop.at(self.loop.now + self.rng.expovariate(rate), arrive)

        self.loop.at(self.loop.now, arrive)

    def result(self, tid: str) -> Result:
        return next(r for r in self.results if r.task_id == tid)
