"""The ATP budget ledger in the store, shared by every control-plane replica.

Implements `cloud.router.budgets.BudgetLedger` over SQLAlchemy Core. A reservation
is one transaction: for each level of the scope (tenant → site → device, always in
that order, so concurrent transactions cannot deadlock) a conditional

    UPDATE router_budget_usage SET reserved_usd = reserved_usd + :usd, ...
     WHERE scope = :scope AND period = :period
       AND used_usd + reserved_usd + :usd <= :hard  [AND soft / work-unit limits]

must touch its row, else the transaction rolls back and nothing is reserved. On
PostgreSQL the UPDATE's row lock makes a competing transaction wait and re-check the
WHERE clause against the committed row (READ COMMITTED re-evaluation), so the limit
holds across replicas; on SQLite the database write lock serialises writers.
The rule itself is `cloud.router.budgets.admissible`, the same one `MemoryLedger` uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from cloud.router.budgets import (
    Budget,
    BudgetUsage,
    Denial,
    Reservation,
    ReserveOutcome,
    admissible,
    check_amounts,
    period_index,
)
from cloud.router.errors import BudgetError

__all__ = ["SqlLedger"]

_md = sa.MetaData()
budgets_t = sa.Table(
    "router_budgets",
    _md,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("limit_usd", sa.Float, nullable=False),
    sa.Column("limit_work_units", sa.Float, nullable=True),
    sa.Column("soft_fraction", sa.Float, nullable=False),
    sa.Column("safety_allowance_usd", sa.Float, nullable=False),
    sa.Column("period_s", sa.Float, nullable=False),
)
usage_t = sa.Table(
    "router_budget_usage",
    _md,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("period", sa.BigInteger, primary_key=True),
    sa.Column("used_usd", sa.Float, nullable=False),
    sa.Column("reserved_usd", sa.Float, nullable=False),
    sa.Column("used_work_units", sa.Float, nullable=False),
    sa.Column("reserved_work_units", sa.Float, nullable=False),
)
reservations_t = sa.Table(
    "router_reservations",
    _md,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("keys", sa.JSON, nullable=False),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("work_units", sa.Float, nullable=False),
    sa.Column("safety", sa.Boolean, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

EPS = 1e-12


class _Denied(Exception):
    def __init__(self, outcome: ReserveOutcome) -> None:
        self.outcome = outcome


def _budget(row: Any) -> Budget:
    return Budget(
        row.scope,
        row.limit_usd,
        row.limit_work_units,
        row.soft_fraction,
        row.safety_allowance_usd,
        row.period_s,
    )


class SqlLedger:
    """Budget ledger over a store engine (run the store's migrations first)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"

    @classmethod
    def open(cls, url: str, *, pool_size: int = 8, migrate: bool = True) -> SqlLedger:
        """Open (and by default migrate) the store at `url`; a ledger on its engine."""
        from cloud.store import Store

        return cls(Store.open(url, pool_size=pool_size, migrate=migrate).engine)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except exc.DBAPIError as e:
            raise BudgetError(f"budget ledger at {self.engine.url!r}: {e.orig}") from e

    def _insert_ignore(self, table: sa.Table, values: dict[str, Any]) -> Any:
        if self._pg:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).values(**values).on_conflict_do_nothing()
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        return lite_insert(table).values(**values).on_conflict_do_nothing()

    def set_budget(self, budget: Budget) -> None:
        b = budget.validate()
        values = {
            "limit_usd": b.limit_usd,
            "limit_work_units": b.limit_work_units,
            "soft_fraction": b.soft_fraction,
            "safety_allowance_usd": b.safety_allowance_usd,
            "period_s": b.period_s,
        }
        with self._tx() as conn:
            n = conn.execute(
                budgets_t.update().where(budgets_t.c.scope == b.scope).values(**values)
            ).rowcount
            if n == 0:
                conn.execute(budgets_t.insert().values(scope=b.scope, **values))

    def reserve(self, r: Reservation, now_unix: float) -> ReserveOutcome:
        check_amounts(r)
        try:
            with self._tx() as conn:
                return self._reserve(conn, r, now_unix)
        except _Denied as d:
            return d.outcome
        except BudgetError as e:
            if "unique" in str(e).lower() or "duplicate" in str(e).lower():
                raise BudgetError(f"reservation {r.reservation_id} already exists") from e
            raise

    def _reserve(self, conn: Connection, r: Reservation, now_unix: float) -> ReserveOutcome:
        rows = conn.execute(sa.select(budgets_t).where(budgets_t.c.scope.in_(r.scopes))).all()
        budgets = {row.scope: _budget(row) for row in rows}
        if r.scopes[0] not in budgets:
            return ReserveOutcome(False, Denial.NO_BUDGET, r.scopes[0])
        keys: list[list[Any]] = []
        for scope in r.scopes:  # broadest first: one lock order for every transaction
            b = budgets.get(scope)
            if b is None:
                continue
            period = period_index(now_unix, b.period_s)
            conn.execute(
                self._insert_ignore(
                    usage_t,
                    {
                        "scope": scope,
                        "period": period,
                        "used_usd": 0.0,
                        "reserved_usd": 0.0,
                        "used_work_units": 0.0,
                        "reserved_work_units": 0.0,
                    },
                )
            )
            u = usage_t.c
            hard = b.limit_usd + (b.safety_allowance_usd if r.safety else 0.0)
            cond = [
                u.scope == scope,
                u.period == period,
                u.used_usd + u.reserved_usd + r.usd <= hard + EPS,
            ]
            if b.limit_work_units is not None and not r.safety:
                cond.append(
                    u.used_work_units + u.reserved_work_units + r.work_units
                    <= b.limit_work_units + EPS
                )
            if not r.cheapest_tier and not r.safety:
                cond.append(
                    u.used_usd + u.reserved_usd + r.usd <= b.soft_fraction * b.limit_usd + EPS
                )
            n = conn.execute(
                usage_t.update()
                .where(*cond)
                .values(
                    reserved_usd=u.reserved_usd + r.usd,
                    reserved_work_units=u.reserved_work_units + r.work_units,
                )
            ).rowcount
            if n != 1:
                row = conn.execute(
                    sa.select(usage_t).where(u.scope == scope, u.period == period)
                ).one()
                denial = admissible(
                    b,
                    row.used_usd,
                    row.reserved_usd,
                    row.used_work_units,
                    row.reserved_work_units,
                    r,
                )
                raise _Denied(
                    ReserveOutcome(
                        False, denial if denial is not Denial.NONE else Denial.HARD, scope
                    )
                )
            keys.append([scope, period])
        conn.execute(
            reservations_t.insert().values(
                id=r.reservation_id,
                keys=keys,
                usd=r.usd,
                work_units=r.work_units,
                safety=r.safety,
                expires_at=r.expires_at,
            )
        )
        return ReserveOutcome(True)

    def _settle(self, reservation_id: str, usd: float, work_units: float) -> None:
        with self._tx() as conn:
            row = conn.execute(
                sa.select(reservations_t).where(reservations_t.c.id == reservation_id)
            ).one_or_none()
            gone = conn.execute(
                reservations_t.delete().where(reservations_t.c.id == reservation_id)
            ).rowcount
            if row is None or gone != 1:
                raise BudgetError(f"reservation {reservation_id} is not open (settled or expired)")
            usd = min(max(usd, 0.0), row.usd)
            work_units = min(max(work_units, 0.0), row.work_units)
            u = usage_t.c
            for scope, period in row.keys:
                conn.execute(
                    usage_t.update()
                    .where(u.scope == scope, u.period == period)
                    .values(
                        reserved_usd=sa.func.greatest(u.reserved_usd - row.usd, 0.0)
                        if self._pg
                        else sa.func.max(u.reserved_usd - row.usd, 0.0),
                        reserved_work_units=sa.func.greatest(
                            u.reserved_work_units - row.work_units, 0.0
                        )
                        if self._pg
                        else sa.func.max(u.reserved_work_units - row.work_units, 0.0),
                        used_usd=u.used_usd + usd,
                        used_work_units=u.used_work_units + work_units,
                    )
                )

    def commit(self, reservation_id: str, usd: float, work_units: float) -> None:
        import math

        if not (math.isfinite(usd) and math.isfinite(work_units)):
            raise BudgetError(f"reservation {reservation_id}: non-finite actual cost")
        self._settle(reservation_id, usd, work_units)

    def release(self, reservation_id: str) -> None:
        self._settle(reservation_id, 0.0, 0.0)

    def bill(self, scopes: tuple[str, ...], usd: float, work_units: float, now_unix: float) -> None:
        """Charge spent money no reservation holds any more (a late answer)."""
        import math

        if not (math.isfinite(usd) and math.isfinite(work_units) and usd >= 0 and work_units >= 0):
            raise BudgetError(f"bill of {usd!r} USD, {work_units!r} work units; expected ≥ 0")
        with self._tx() as conn:
            rows = conn.execute(sa.select(budgets_t).where(budgets_t.c.scope.in_(scopes))).all()
            budgets = {row.scope: _budget(row) for row in rows}
            u = usage_t.c
            for scope in scopes:  # broadest first, the lock order of `reserve`
                b = budgets.get(scope)
                if b is None:
                    continue
                period = period_index(now_unix, b.period_s)
                conn.execute(
                    self._insert_ignore(
                        usage_t,
                        {
                            "scope": scope,
                            "period": period,
                            "used_usd": 0.0,
                            "reserved_usd": 0.0,
                            "used_work_units": 0.0,
                            "reserved_work_units": 0.0,
                        },
                    )
                )
                conn.execute(
                    usage_t.update()
                    .where(u.scope == scope, u.period == period)
                    .values(
                        used_usd=u.used_usd + usd, used_work_units=u.used_work_units + work_units
                    )
                )

    def expire(self, now_unix: float) -> int:
        with self._tx() as conn:
            ids = (
                conn.execute(
                    sa.select(reservations_t.c.id).where(reservations_t.c.expires_at <= now_unix)
                )
                .scalars()
                .all()
            )
        n = 0
        for rid in ids:
            with contextlib.suppress(BudgetError):  # settled concurrently
                self.release(rid)
                n += 1
        return n

    def usage(self, scope: str, now_unix: float) -> BudgetUsage | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(budgets_t).where(budgets_t.c.scope == scope)).one_or_none()
            if row is None:
                return None
            b = _budget(row)
            u = conn.execute(
                sa.select(usage_t).where(
                    usage_t.c.scope == scope,
                    usage_t.c.period == period_index(now_unix, b.period_s),
                )
            ).one_or_none()
        if u is None:
            return BudgetUsage(scope, b.limit_usd, 0.0, 0.0, 0.0, 0.0)
        return BudgetUsage(
            scope, b.limit_usd, u.used_usd, u.reserved_usd, u.used_work_units, u.reserved_work_units
        )

    def budgets(self) -> list[Budget]:
        with self._tx() as conn:
            return [_budget(row) for row in conn.execute(sa.select(budgets_t)).all()]

    def open_reservations(self) -> int:
        with self._tx() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(reservations_t)).scalar_one()
            )
