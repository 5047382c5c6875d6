"""Budget ledgers: one contract for the in-memory and the SQL ledger, and the
"64 concurrent admissions" race on SQLite and on PostgreSQL with two router processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.router.budgets import Budget, Denial, MemoryLedger, Reservation
from cloud.router.errors import BudgetError, RouterConfigError
from cloud.store.budgets import SqlLedger
from tests.router._admit_worker import admit_concurrently
from tests.servers import Postgres

REPO = Path(__file__).resolve().parents[2]
CHAIN = ("acme", "acme/lab", "acme/lab/r1")


def _r(
    rid: str,
    usd: float,
    *,
    safety: bool = False,
    cheapest: bool = True,
    work: float = 1.0,
    expires: float = 1e12,
    scopes: tuple[str, ...] = CHAIN,
) -> Reservation:
    return Reservation(rid, scopes, usd, work, safety, cheapest, expires)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.create_database(f"ledger_{request.node.name[:40].lower()}".replace("[", "_"))
    led = SqlLedger.open(url)
    yield led
    led.engine.dispose()


def test_reserve_commit_release_keep_the_books_at_every_level(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 10.0))
    ledger.set_budget(Budget("acme/lab", 4.0))
    assert ledger.reserve(_r("a", 3.0), 0).ok
    out = ledger.reserve(_r("b", 2.0), 0)
    assert (out.ok, out.denial, out.scope) == (False, Denial.HARD, "acme/lab")
    ledger.commit("a", 1.0, 1.0)  # actual cost below the worst case: the rest is released
    assert ledger.reserve(_r("b", 2.0), 0).ok
    ledger.release("b")  # failure: full refund
    for scope, used in (("acme", 1.0), ("acme/lab", 1.0)):
        u = ledger.usage(scope, 0)
        assert u is not None and (u.used_usd, u.reserved_usd) == (used, 0.0)


def test_commit_never_charges_more_than_was_reserved(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 10.0))
    assert ledger.reserve(_r("a", 2.0), 0).ok
    ledger.commit("a", 50.0, 1.0)
    u = ledger.usage("acme", 0)
    assert u is not None and u.used_usd == 2.0


def test_a_reservation_settles_once(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 10.0))
    ledger.reserve(_r("a", 1.0), 0)
    ledger.commit("a", 1.0, 1.0)
    with pytest.raises(BudgetError, match="not open"):
        ledger.release("a")


def test_soft_limit_admits_only_the_cheapest_tier(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 10.0, soft_fraction=0.5))
    assert ledger.reserve(_r("a", 4.0, cheapest=False), 0).ok
    out = ledger.reserve(_r("b", 2.0, cheapest=False), 0)
    assert (out.ok, out.denial) == (False, Denial.SOFT)
    assert ledger.reserve(_r("c", 2.0, cheapest=True), 0).ok


def test_hard_limit_rejects_all_but_safety_within_its_allowance(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 1.0, safety_allowance_usd=0.5))
    assert ledger.reserve(_r("a", 1.0), 0).ok
    assert not ledger.reserve(_r("b", 0.1), 0).ok
    assert ledger.reserve(_r("s1", 0.4, safety=True), 0).ok
    assert not ledger.reserve(_r("s2", 0.4, safety=True), 0).ok


def test_leaked_reservations_expire(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 1.0))
    assert ledger.reserve(_r("a", 1.0, expires=100.0), 0).ok
    assert not ledger.reserve(_r("b", 1.0), 0).ok
    assert ledger.expire(99.0) == 0
    assert ledger.expire(100.0) == 1
    assert ledger.reserve(_r("b", 1.0), 0).ok


def test_a_tenant_without_a_budget_is_denied_and_bad_amounts_refused(ledger: MemoryLedger) -> None:
    out = ledger.reserve(_r("a", 1.0, scopes=("ghost",)), 0)
    assert (out.ok, out.denial) == (False, Denial.NO_BUDGET)
    assert "ghost" in out.reason
    ledger.set_budget(Budget("acme", 1.0))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(BudgetError, match="usd"):
            ledger.reserve(_r("x", bad), 0)
    with pytest.raises(RouterConfigError, match="limit_usd"):
        ledger.set_budget(Budget("acme", -5.0))


def test_periods_start_afresh(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 1.0, period_s=100.0))
    assert ledger.reserve(_r("a", 1.0), 50.0).ok
    ledger.commit("a", 1.0, 1.0)
    assert not ledger.reserve(_r("b", 1.0), 99.0).ok
    assert ledger.reserve(_r("c", 1.0), 100.0).ok


def test_64_concurrent_admissions_never_exceed_the_budget(ledger: MemoryLedger) -> None:
    ledger.set_budget(Budget("acme", 10.0))
    import time

    outcomes = admit_concurrently(ledger, 64, "p", None)
    u = ledger.usage("acme", time.monotonic())
    assert u is not None and u.reserved_usd == pytest.approx(10.0)
    assert outcomes.count("admitted") == 20 and outcomes.count("budget_exhausted") == 44


@pytest.mark.services
def test_64_concurrent_admissions_from_two_router_processes_on_postgresql(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.create_database("router_budget_race")
    ledger = SqlLedger.open(url)
    ledger.set_budget(Budget("acme", 10.0))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.router._admit_worker", url, "32", str(go), f"proc{i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    admitted = sum(r["admitted"] for r in results)
    exhausted = sum(r["exhausted"] for r in results)
    import time

    u = ledger.usage("acme", time.monotonic())
    assert admitted == 20 and exhausted == 44, results
    assert u is not None and u.reserved_usd == pytest.approx(10.0)
    assert ledger.open_reservations() == 20
    ledger.engine.dispose()
