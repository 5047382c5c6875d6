"""Budgets under every timing: a slow backend, a late answer, a cancelled caller.

Ledgers: in memory, SQLite and a real PostgreSQL; the slow-backend case also with two
routers ("planes") sharing one PostgreSQL database through their own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.router import Answer, Budget, MemoryLedger, Outcome, Qos, Registry, Router, RouterConfig
from cloud.router.errors import RouterConfigError
from cloud.router.service import RouterRunner, RouterSettings
from cloud.router.task import Scope, Task
from cloud.store.budgets import SqlLedger
from tests.router._fixtures import spec
from tests.servers import Postgres

SCOPE = Scope("acme", "lab", "r1")


@dataclass
class Clock:
    t: float = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(f"timing_{request.node.name[:40].lower()}".replace("[", "_"))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[object]]:
    """Two handles on one ledger: the same object in memory, two engines in SQL."""
    if request.param == "memory":
        led = MemoryLedger()
        yield [led, led]
        return
    url = _url(request.param, request, tmp_path)
    a, b = SqlLedger.open(url), SqlLedger.open(url, migrate=False)
    yield [a, b]
    a.engine.dispose()
    b.engine.dispose()


def _slow_registry() -> Registry:
    # A backend allowed 300 s per call, billing $0.60 per call, against a $1.00 budget.
    return Registry([spec("slow", 0, capacity=8, per_call=0.6, latency=0.01, timeout_s=300.0)])


def test_a_slow_backend_keeps_its_reservation_until_it_answers_and_is_billed(
    ledgers: list[object],
) -> None:
    clock = Clock()
    one, other = ledgers
    one.set_budget(Budget("acme", 1.0))  # type: ignore[attr-defined]
    plane_a = Router(_slow_registry(), one, clock=clock, instance="a")  # type: ignore[arg-type]
    plane_b = Router(_slow_registry(), other, clock=clock, instance="b")  # type: ignore[arg-type]
    step = plane_a.submit(Task("slow-1", "plan", Qos.BATCH, clock() + 600, SCOPE))
    (d,) = step.dispatches
    assert d.deadline_at == pytest.approx(clock() + 300)  # the backend's timeout
    # 200 s later the call still runs: both planes' expiry sweeps leave it alone ...
    clock.t += 200
    plane_a.tick()
    plane_b.tick()
    assert one.expire(clock()) == 0 and other.expire(clock()) == 0  # type: ignore[attr-defined]
    # ... so a second task on the other plane finds the money reserved.
    r2 = plane_b.submit(Task("slow-2", "plan", Qos.BATCH, clock() + 600, SCOPE)).results
    assert [(r.outcome, r.reason) for r in r2] == [(Outcome.BUDGET_EXHAUSTED, "budget:hard_limit")]
    # The late answer is billed, once, and nothing stays reserved.
    res = plane_a.on_answer(d.dispatch_id, Answer(action=(0.5,))).results
    assert [r.outcome for r in res] == [Outcome.OK] and res[0].cost_usd == pytest.approx(0.6)
    u = other.usage("acme", clock())  # type: ignore[attr-defined]
    assert u is not None and (u.used_usd, u.reserved_usd) == (pytest.approx(0.6), 0.0)
    assert "late_bill" not in plane_a.counters


def test_a_call_past_its_reservation_is_still_billed_not_an_error(ledgers: list[object]) -> None:
    clock = Clock()
    one, other = ledgers
    one.set_budget(Budget("acme", 1.0))  # type: ignore[attr-defined]
    router = Router(_slow_registry(), one, clock=clock)  # type: ignore[arg-type]
    (d,) = router.submit(Task("k", "plan", Qos.BATCH, clock() + 600, SCOPE)).dispatches
    # A replica whose wall clock runs a day ahead sweeps the reservation away.
    assert other.expire(clock() + 86_400) == 1  # type: ignore[attr-defined]
    clock.t += 10
    (res,) = router.on_answer(d.dispatch_id, Answer(action=(0.5,))).results
    assert res.outcome is Outcome.OK
    u = one.usage("acme", clock())  # type: ignore[attr-defined]
    assert u is not None and u.used_usd == pytest.approx(0.6) and u.reserved_usd == 0.0
    assert router.counters["late_bill"] == 1


def test_a_backend_timeout_beyond_the_ledgers_hold_is_refused_at_start() -> None:
    ledger = MemoryLedger()
    with pytest.raises(RouterConfigError, match=r"backend 'slow': timeout_s = 300.0.*120"):
        Router(
            _slow_registry(),
            ledger,
            config=RouterConfig(reservation_ttl_s=120.0),
            clock=time.monotonic,
        )
    # Derived: the longest timeout plus the grace; settable in [router].
    assert Router(_slow_registry(), ledger, clock=time.monotonic).reservation_ttl_s == 330.0
    s = RouterSettings.model_validate({"reservation_ttl_s": 400, "reservation_grace_s": 5})
    assert (s.reservation_ttl_s, s.reservation_grace_s) == (400, 5)


class _Slowish:
    """Answers after a random short delay; counts calls that really ran."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.calls = 0

    async def execute(self, task: Task, timeout_s: float) -> Answer:
        self.calls += 1
        await asyncio.sleep(self.rng.uniform(0.0, 0.03))
        return Answer(action=(0.25,))


class _Counting(MemoryLedger):
    def __init__(self) -> None:
        super().__init__()
        self.settled: dict[str, int] = {}

    def _settle(self, reservation_id: str, usd: float, work_units: float) -> None:
        super()._settle(reservation_id, usd, work_units)
        self.settled[reservation_id] = self.settled.get(reservation_id, 0) + 1


@pytest.mark.parametrize("sql", [False, True])
def test_callers_cancelled_at_any_point_leak_nothing_and_keys_stay_retryable(
    sql: bool, tmp_path: Path
) -> None:
    async def main() -> None:
        ledger: object = (
            SqlLedger.open(f"sqlite:///{tmp_path / 'store.db'}") if sql else _Counting()
        )
        ledger.set_budget(Budget("acme", 1000.0))  # type: ignore[attr-defined]
        registry = Registry([spec("echo", 0, capacity=64, per_call=0.01)])
        router = Router(registry, ledger, clock=time.monotonic)  # type: ignore[arg-type]
        rng = random.Random(7)
        echo = _Slowish(rng)
        runner = RouterRunner(router, {"echo": echo})
        keys = [f"r1:key-{i}" for i in range(200)]

        async def one(key: str) -> None:
            task = Task(key, "plan", Qos.INTERACTIVE, time.monotonic() + 5, SCOPE)
            call = asyncio.ensure_future(runner.route(task))
            # Cancel before admission (0), during it (a yield), or after (a short wait).
            when = rng.choice([0, 1, 2])
            if when == 1:
                await asyncio.sleep(0)
            elif when == 2:
                await asyncio.sleep(rng.uniform(0, 0.03))
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call

        await asyncio.gather(*(one(k) for k in keys))
        deadline = time.monotonic() + 10
        while router.open_dispatches() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert runner.waiting == 0
        assert router.open_dispatches() == {}
        assert ledger.open_reservations() == 0  # type: ignore[attr-defined]
        u = ledger.usage("acme", time.time())  # type: ignore[attr-defined]
        assert u is not None and u.reserved_usd == pytest.approx(0.0, abs=1e-9)
        # At most the calls that really ran were charged, each once.
        assert u.used_usd <= echo.calls * 0.01 + 1e-9
        if isinstance(ledger, _Counting):
            assert all(n == 1 for n in ledger.settled.values())
        # Every key can be retried: no duplicate_task_id, an answer each.
        results = await asyncio.gather(
            *(
                runner.route(Task(k, "plan", Qos.INTERACTIVE, time.monotonic() + 5, SCOPE))
                for k in keys
            )
        )
        assert {(r.outcome, r.reason) for r in results} == {(Outcome.OK, "accepted")}
        assert runner.waiting == 0
        await runner.close()
        if isinstance(ledger, SqlLedger):
            ledger.engine.dispose()

    asyncio.run(main())


def test_closing_the_runner_settles_calls_in_flight() -> None:
    class _Hang:
        async def execute(self, task: Task, timeout_s: float) -> Answer:
            await asyncio.sleep(3600)
            return Answer()

    async def main() -> None:
        ledger = MemoryLedger()
        ledger.set_budget(Budget("acme", 10.0))
        router = Router(Registry([spec("hang", 0)]), ledger, clock=time.monotonic)
        runner = RouterRunner(router, {"hang": _Hang()})
        call = asyncio.ensure_future(
            runner.route(Task("x", "plan", Qos.BATCH, time.monotonic() + 20, SCOPE))
        )
        while not router.open_dispatches():
            await asyncio.sleep(0.01)
        await runner.close()
        assert ledger.open_reservations() == 0 and router.open_dispatches() == {}
        call.cancel()  # a caller cancelled after the close changes nothing, raises nothing
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await runner.close()  # twice is fine

    asyncio.run(main())
