"""The router's pure core under random interleavings of admit / answer / timeout / cancel /
expire: the budget ledger's books stay right whatever the order.

Invariants after every step:
- spend at every level ≤ its limit + its declared safety allowance;
- reserved at every level = the sum of the router's open calls' reservations;
- the ledger holds exactly the router's open calls, and no reservation ever expires
  under a live call (a reservation lives as long as its call can);
- every call is settled exactly once (commit or release), every task ends once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.router import Answer, Budget, MemoryLedger, Qos, Registry, Router, RouterConfig, Scope
from cloud.router.task import Task
from tests.router._fixtures import spec

BUDGETS = (
    Budget("acme", 1.0, limit_work_units=8.0, safety_allowance_usd=0.4),
    Budget("acme/lab", 0.7),
    Budget("acme/lab/r1", 0.5, soft_fraction=0.6),
)
SCOPES = (Scope("acme", "lab", "r1"), Scope("acme", "lab", "r2"), Scope("acme"))


class CountingLedger(MemoryLedger):
    """A MemoryLedger that counts how often each reservation is settled."""

    def __init__(self) -> None:
        super().__init__()
        self.settled: dict[str, int] = {}
        self.expired = 0
        self.billed = 0

    def commit(self, reservation_id: str, usd: float, work_units: float) -> None:
        super().commit(reservation_id, usd, work_units)
        self.settled[reservation_id] = self.settled.get(reservation_id, 0) + 1

    def release(self, reservation_id: str) -> None:
        super().release(reservation_id)
        self.settled[reservation_id] = self.settled.get(reservation_id, 0) + 1

    def expire(self, now_unix: float) -> int:
        n = super().expire(now_unix)
        self.expired += n
        return n

    def bill(self, scopes: tuple[str, ...], usd: float, work_units: float, now: float) -> None:
        self.billed += 1
        super().bill(scopes, usd, work_units, now)


@dataclass
class Clock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Harness:
    clock: Clock = field(default_factory=Clock)
    ledger: CountingLedger = field(default_factory=CountingLedger)
    router: Router = field(init=False)
    sent: set[str] = field(default_factory=set)
    live: list[str] = field(default_factory=list)  # dispatches the backend may answer
    submitted: list[str] = field(default_factory=list)
    ended: dict[str, int] = field(default_factory=dict)
    n: int = 0

    def __post_init__(self) -> None:
        for b in BUDGETS:
            self.ledger.set_budget(b)
        registry = Registry(
            [
                spec("small", 0, capacity=2, per_call=0.05, latency=0.05, timeout_s=1.0),
                spec("mid", 1, capacity=2, per_call=0.12, latency=0.05, timeout_s=2.0),
                spec("big", 2, capacity=1, per_call=0.3, latency=0.05, timeout_s=3.0),
            ]
        )
        self.router = Router(
            registry,
            self.ledger,
            config=RouterConfig(reservation_grace_s=0.5, queue_limit=4),
            clock=self.clock,
        )

    def apply(self, step: object) -> None:
        for d in step.dispatches:  # type: ignore[attr-defined]
            assert d.dispatch_id not in self.sent
            self.sent.add(d.dispatch_id)
            self.live.append(d.dispatch_id)
        for r in step.results:  # type: ignore[attr-defined]
            self.ended[r.task_id] = self.ended.get(r.task_id, 0) + 1

    def check(self) -> None:
        open_calls = self.router.open_dispatches()
        assert self.ledger.open_reservations() == len(open_calls)
        assert self.ledger.expired == 0, "a reservation expired under a live call"
        assert self.ledger.billed == 0
        assert all(n == 1 for n in self.ledger.settled.values())
        assert set(self.ledger.settled) | set(open_calls) == self.sent
        assert not set(self.ledger.settled) & set(open_calls)
        for b in BUDGETS:
            u = self.ledger.usage(b.scope, self.clock())
            assert u is not None
            assert u.used_usd <= b.limit_usd + b.safety_allowance_usd + 1e-9
            # Reserved at this level: the open calls of tasks whose scope chain holds it.
            expected = sum(
                usd
                for did, usd in open_calls.items()
                if b.scope in self.router._open[did].d.task.scope.chain()
            )
            assert u.reserved_usd == pytest.approx(expected, abs=1e-9)
        assert self.ledger.overruns == 0
        assert all(n == 1 for n in self.ended.values())


submit = st.tuples(
    st.just("submit"),
    st.sampled_from(list(Qos)),
    st.floats(0.05, 4.0),
    st.floats(0.5, 2.0),
    st.integers(0, len(SCOPES) - 1),
)
answer = st.tuples(
    st.just("answer"),
    st.integers(0, 50),
    st.sampled_from(["good", "grey", "error", "overloaded", "timeout", "bad_cost", "cancelled"]),
)
advance = st.tuples(st.just("advance"), st.floats(0.01, 2.5))
cancel = st.tuples(st.just("cancel"), st.integers(0, 50))
expire = st.tuples(st.just("expire"))
OPS = st.lists(st.one_of(submit, submit, answer, answer, advance, cancel, expire), max_size=70)


def _answer(kind: str) -> Answer:
    return {
        "good": Answer(action=(0.1,)),
        "grey": Answer(),
        "error": Answer(error="UNAVAILABLE: gone"),
        "overloaded": Answer(overloaded=True),
        "timeout": Answer(error="timeout"),
        "bad_cost": Answer(action=(0.1,), work_units=-3.0),
        "cancelled": Answer(error="cancelled"),
    }[kind]


def run(ops: list[tuple[object, ...]]) -> Harness:
    h = Harness()
    for op in ops:
        kind = op[0]
        if kind == "submit":
            _, qos, deadline_s, work, scope = op
            h.n += 1
            tid = f"t{h.n}"
            h.submitted.append(tid)
            task = Task(tid, "plan", qos, h.clock() + deadline_s, SCOPES[scope], work)  # type: ignore[arg-type]
            h.apply(h.router.submit(task))
        elif kind == "answer" and h.live:
            did = h.live.pop(int(op[1]) % len(h.live))  # type: ignore[call-overload]
            h.apply(h.router.on_answer(did, _answer(str(op[2]))))
        elif kind == "advance":
            h.clock.t += float(op[1])  # type: ignore[arg-type]
            h.apply(h.router.tick())
        elif kind == "cancel" and h.submitted:
            tid = h.submitted[int(op[1]) % len(h.submitted)]  # type: ignore[call-overload]
            h.apply(h.router.cancel(tid))
        elif kind == "expire":
            h.ledger.expire(h.clock())
        h.check()
    # Drain: every call answers late or never; time runs past every deadline.
    for did in list(h.live):
        h.apply(h.router.on_answer(did, Answer(action=(0.1,))))
    for _ in range(8):
        h.clock.t += 2.0
        h.apply(h.router.tick())
        for did in list(h.router.open_dispatches()):
            h.apply(h.router.on_answer(did, Answer(error="cancelled")))
        h.check()
    h.ledger.expire(h.clock.t + 1e6)  # a crashed replica's leftovers: there are none
    assert h.ledger.expired == 0
    assert not h.router.open_dispatches() and h.ledger.open_reservations() == 0
    assert set(h.ledger.settled) == h.sent
    assert set(h.ended) == set(h.submitted), "every task ends exactly once"
    for b in BUDGETS:
        u = h.ledger.usage(b.scope, h.clock())
        assert u is not None and u.reserved_usd == pytest.approx(0.0, abs=1e-9)
    return h


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_interleavings_keep_the_books(ops: list[tuple[object, ...]]) -> None:
    run(ops)


def test_a_busy_interleaving_spends_up_to_the_limit_and_no_further() -> None:
    ops: list[tuple[object, ...]] = []
    for i in range(40):
        ops.append(("submit", Qos.SAFETY if i % 5 == 0 else Qos.INTERACTIVE, 3.0, 1.0, i % 3))
        ops.append(("answer", i, "good"))
        if i % 7 == 0:
            ops.append(("cancel", i))
        ops.append(("advance", 0.3))
    h = run(ops)
    u = h.ledger.usage("acme", h.clock())
    assert u is not None and u.used_usd > 0.5  # money was really spent ...
    assert u.used_usd <= 1.0 + 0.4 + 1e-9  # ... within limit + safety allowance


def _replay(ops: list[tuple[object, ...]], ledger: object) -> tuple[list[str], list[float]]:
    """The same interleaving against any ledger: results in order, final spend per level."""
    clock = Clock()
    for b in BUDGETS:
        ledger.set_budget(b)  # type: ignore[attr-defined]
    router = Router(
        Harness().router.registry,
        ledger,  # type: ignore[arg-type]
        config=RouterConfig(reservation_grace_s=0.5, queue_limit=4),
        clock=clock,
        instance="x",
    )
    live: list[str] = []
    out: list[str] = []
    submitted: list[str] = []

    def apply(step: object) -> None:
        live.extend(d.dispatch_id for d in step.dispatches)  # type: ignore[attr-defined]
        out.extend(f"{r.task_id}:{r.outcome.value}:{r.reason}" for r in step.results)  # type: ignore[attr-defined]

    for op in ops:
        if op[0] == "submit":
            _, qos, deadline_s, work, scope = op
            tid = f"t{len(submitted)}"
            submitted.append(tid)
            apply(router.submit(Task(tid, "plan", qos, clock() + deadline_s, SCOPES[scope], work)))  # type: ignore[arg-type]
        elif op[0] == "answer" and live:
            did = live.pop(int(op[1]) % len(live))  # type: ignore[call-overload]
            apply(router.on_answer(did, _answer(str(op[2]))))
        elif op[0] == "advance":
            clock.t += float(op[1])  # type: ignore[arg-type]
            apply(router.tick())
        elif op[0] == "cancel" and submitted:
            apply(router.cancel(submitted[int(op[1]) % len(submitted)]))  # type: ignore[call-overload]
        elif op[0] == "expire":
            ledger.expire(clock())  # type: ignore[attr-defined]
    spend = [ledger.usage(b.scope, clock()).used_usd for b in BUDGETS]  # type: ignore[attr-defined]
    return out, spend


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_the_sql_ledger_keeps_the_same_books_as_the_memory_ledger(
    ops: list[tuple[object, ...]],
) -> None:
    import tempfile
    from pathlib import Path

    from cloud.store.budgets import SqlLedger

    with tempfile.TemporaryDirectory() as d:
        sql = SqlLedger.open(f"sqlite:///{Path(d) / 'store.db'}")
        try:
            got = _replay(ops, sql)
        finally:
            sql.engine.dispose()
    want = _replay(ops, MemoryLedger())
    assert got[0] == want[0]
    assert got[1] == pytest.approx(want[1], abs=1e-9)
