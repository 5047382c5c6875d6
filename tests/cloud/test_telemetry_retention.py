"""Telemetry retention and day partitions: SQLite (one table, DELETE) and PostgreSQL
(day partitions, dropped whole) must keep exactly the same points and answer the same
queries; the migration moves an existing home's points into partitions; the plane's
upkeep runs under the lease."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from cloud.lease import AdvisoryLease, leader
from cloud.store import FencedError, Store, TelemetryRecord
from cloud.store._base import MIGRATIONS
from cloud.store.ingest_batch import record_telemetry_many
from cloud.store.telemetry_partitions import DEFAULT_PARTITION, day_partitions, partition_name
from cloud.telemetry_retention import (
    AHEAD_DAYS,
    LEASE,
    fenced_upkeep,
    run_upkeep,
    upkeep_once,
)
from tests.servers import Postgres

TODAY = dt.datetime.now(dt.UTC).date()
MIDNIGHT = dt.datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=dt.UTC)


@pytest.fixture
def pair(postgres: Postgres, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    lite = Store.open(f"sqlite:///{tmp_path / 'plane.db'}")
    pg = Store.open(postgres.create_database(f"retention_{uuid.uuid4().hex[:10]}"))
    yield lite, pg
    lite.close()
    pg.close()


def _rows(pg: Store, sql: str) -> list[str]:
    with pg.engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(sa.text(sql))]


def _points(rng: random.Random, n: int) -> list[tuple[str, int, list[TelemetryRecord]]]:
    out = []
    for seq in range(1, n + 1):
        # From 6 days back to 2 days ahead, with points right at day boundaries too.
        day = MIDNIGHT + dt.timedelta(days=rng.randint(-6, 2))
        at = day + rng.choice(
            [dt.timedelta(0), dt.timedelta(microseconds=-1), dt.timedelta(hours=rng.random() * 24)]
        )
        dev = rng.choice(["robot-1", "robot-2"])
        out.append((dev, seq, [TelemetryRecord(at=at, loop_p99_ms=float(seq))]))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sqlite_and_postgres_keep_the_same_points_and_answer_the_same(
    pair: tuple[Store, Store], seed: int
) -> None:
    lite, pg = pair
    rng = random.Random(seed)
    pg.prepare_telemetry_days(TODAY - dt.timedelta(days=4), 2)  # some days exist up front
    writes = _points(rng, 120)
    for s in pair:
        for d in ("robot-1", "robot-2"):
            s.add_device(d, uuid.uuid4().hex)
        got = record_telemetry_many(
            s, [(d, q, pts, MIDNIGHT - dt.timedelta(days=7)) for d, q, pts in writes]
        )
        assert all(got)
    # Days created after their points arrived: the points move out of the default.
    assert pg.prepare_telemetry_days(TODAY - dt.timedelta(days=7), 10)
    parts = day_partitions_of(pg)
    assert partition_name(TODAY - dt.timedelta(days=7)) in parts
    assert _rows(pg, f"SELECT count(*) FROM {DEFAULT_PARTITION}") == ["0"]

    def answers(s: Store) -> list[object]:
        since = MIDNIGHT - dt.timedelta(days=1, hours=3)
        return [
            [(p.at, p.loop_p99_ms) for p in s.telemetry(d, limit=1000)]
            + [(p.at, p.loop_p99_ms) for p in s.telemetry(d, limit=7, since=since)]
            for d in ("robot-1", "robot-2")
        ]

    assert answers(lite) == answers(pg)
    cutoff = MIDNIGHT - dt.timedelta(days=2, hours=rng.random() * 24)
    r_lite, r_pg = lite.prune_telemetry(cutoff), pg.prune_telemetry(cutoff)
    assert r_lite.kept_from == r_pg.kept_from == MIDNIGHT - dt.timedelta(days=3)
    assert answers(lite) == answers(pg)
    kept = [p.at for d in ("robot-1", "robot-2") for p in pg.telemetry(d, limit=1000)]
    assert kept and min(kept) >= r_pg.kept_from
    assert sum(1 for _, _, pts in writes if pts[0].at >= r_pg.kept_from) == len(kept)
    # Whole partitions went; none of a kept day did.
    assert r_lite.points and r_pg.points is None
    assert set(r_pg.partitions) == {
        partition_name(TODAY - dt.timedelta(days=k)) for k in (4, 5, 6, 7)
    }
    assert not set(r_pg.partitions) & set(day_partitions_of(pg))
    # Batch markers received before the cutoff went too: the keys are free again.
    for s in pair:
        assert record_telemetry_many(s, [("robot-1", 1, writes[0][2], MIDNIGHT)]) == [True]


def day_partitions_of(pg: Store) -> list[str]:
    with pg.engine.connect() as conn:
        return sorted(day_partitions(conn).values())


def test_a_point_far_outside_every_day_goes_to_the_default_partition_and_retention_removes_it(
    pair: tuple[Store, Store],
) -> None:
    _, pg = pair
    pg.add_device("robot-1", "f" * 64)
    old = MIDNIGHT - dt.timedelta(days=400)
    assert record_telemetry_many(pg, [("robot-1", 1, [TelemetryRecord(at=old)], MIDNIGHT)])
    assert _rows(pg, f"SELECT count(*) FROM {DEFAULT_PARTITION}") == ["1"]
    assert [p.at for p in pg.telemetry("robot-1")] == [old]
    pg.prune_telemetry(MIDNIGHT - dt.timedelta(days=30))
    assert pg.telemetry("robot-1") == []


def test_the_migration_moves_an_existing_homes_points_into_partitions(
    postgres: Postgres,
) -> None:
    url = postgres.create_database(f"migrate_{uuid.uuid4().hex[:10]}")
    store = Store.open(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:  # back to the one-table schema of an older home
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "telemetry@0001")
    assert _rows(store, "SELECT relkind FROM pg_class WHERE relname = 'telemetry'") == ["r"]
    store.add_device("robot-1", "e" * 64)
    ats = [MIDNIGHT - dt.timedelta(days=k) + dt.timedelta(hours=1) for k in (0, 1, 40, 500)]
    store.record_telemetry("robot-1", 1, [TelemetryRecord(at=a, loop_p99_ms=1.0) for a in ats])
    before = _rows(store, "SELECT id FROM telemetry ORDER BY id")
    store.close()

    store = Store.open(url)  # opening the home migrates it
    try:
        assert _rows(store, "SELECT relkind FROM pg_class WHERE relname = 'telemetry'") == ["p"]
        assert _rows(store, "SELECT id FROM telemetry ORDER BY id") == before
        assert sorted(p.at for p in store.telemetry("robot-1")) == sorted(ats)
        parts = day_partitions_of(store)
        for k in (-2, -1, 0, 1, 40):  # days with points (within a year), yesterday to 2 ahead
            assert partition_name(TODAY - dt.timedelta(days=k)) in parts
        assert _rows(store, f"SELECT count(*) FROM {DEFAULT_PARTITION}") == ["1"]  # 500 days
        # New points get new ids.
        assert store.record_telemetry("robot-1", 2, [TelemetryRecord(at=MIDNIGHT)])
        assert int(_rows(store, "SELECT max(id) FROM telemetry")[0]) > int(before[-1])
    finally:
        store.close()


def test_upkeep_makes_days_ahead_and_runs_only_on_the_lease_holder(postgres: Postgres) -> None:
    url = postgres.create_database(f"upkeep_{uuid.uuid4().hex[:10]}")
    a, b = Store.open(url), Store.open(url)
    created, _ = upkeep_once(a, 30.0, now=MIDNIGHT + dt.timedelta(days=10))
    assert created == [partition_name(TODAY + dt.timedelta(days=k)) for k in range(10, 14)]

    async def both() -> tuple[list[str], str | None]:
        tasks = [asyncio.create_task(run_upkeep(s, 30.0, every_s=3600)) for s in (a, b)]
        try:
            for _ in range(100):
                holder = await asyncio.to_thread(leader, url, LEASE)
                parts = day_partitions_of(a)
                want = partition_name(TODAY + dt.timedelta(days=AHEAD_DAYS))
                if holder is not None and want in parts:
                    return parts, holder
                await asyncio.sleep(0.1)
            return day_partitions_of(a), None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        parts, holder = asyncio.run(both())
        assert holder is not None and holder.startswith(f"edgeflux-lease:{LEASE}:")
        for k in range(AHEAD_DAYS + 1):
            assert partition_name(TODAY + dt.timedelta(days=k)) in parts
    finally:
        a.close()
        b.close()


def test_a_deposed_upkeep_holder_writes_nothing(postgres: Postgres) -> None:
    """The upkeep's writes carry its lease's epoch: a holder whose term is over (it
    stalled and another replica took the lease) creates and drops no partition."""
    url = postgres.create_database(f"upkeep_fence_{uuid.uuid4().hex[:10]}")
    store = Store.open(url)
    lease = AdvisoryLease(url, LEASE, retry_s=0.2).start()
    try:
        assert lease.wait_held(10)
        later = MIDNIGHT + dt.timedelta(days=40)
        want = partition_name(TODAY + dt.timedelta(days=40))
        stale = types.SimpleNamespace(name=LEASE, epoch=lease.epoch - 1, lease_s=lease.lease_s)
        with pytest.raises(FencedError, match="term"):
            fenced_upkeep(store, 30.0, stale, now=later)  # type: ignore[arg-type]
        assert want not in day_partitions_of(store)
        created, _ = fenced_upkeep(store, 30.0, lease, now=later)
        assert want in created and want in day_partitions_of(store)
    finally:
        lease.stop()
        store.close()
