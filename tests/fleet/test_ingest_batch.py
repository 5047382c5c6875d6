"""Batched telemetry writes on SQLite and on a real PostgreSQL: exactly once per
(device, sequence), unknown and revoked devices refused, health = the newest point."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.store import Store, TelemetryRecord
from cloud.store.ingest_batch import record_telemetry_many
from tests.servers import Postgres

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'plane.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.create_database(f"ingest_batch_{abs(hash(tmp_path)) % 10**8}")
    s = Store.open(url)
    s.add_device("robot-1", "0" * 64)
    s.add_device("robot-2", "1" * 64)
    s.add_device("robot-revoked", "2" * 64)
    s.revoke_device("robot-revoked")
    yield s
    s.close()


def _pt(minutes: int, p99: float) -> list[TelemetryRecord]:
    return [TelemetryRecord(at=T0 + dt.timedelta(minutes=minutes), loop_p99_ms=p99)]


def test_batch_stores_each_sequence_once_and_refuses_unknown_devices(store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    first = record_telemetry_many(
        store,
        [
            ("robot-1", 1, _pt(2, 2.0), now),
            ("robot-1", 1, _pt(2, 2.0), now),  # duplicate inside the batch
            ("robot-1", 2, _pt(1, 1.0), now),  # older point arriving later
            ("robot-2", 1, _pt(5, 5.0), now),
            ("ghost", 1, _pt(1, 1.0), now),
            ("robot-revoked", 1, _pt(1, 1.0), now),
        ],
    )
    assert first == [True, False, True, True, False, False]
    again = record_telemetry_many(store, [("robot-1", 2, _pt(1, 1.0), now)])
    assert again == [False]
    assert len(store.telemetry("robot-1")) == 2 and len(store.telemetry("robot-2")) == 1
    health = store.require_device("robot-1").health
    assert health is not None and health["loop_p99_ms"] == 2.0  # newest point wins
    assert store.require_device("robot-1").last_seen is not None
    assert store.telemetry("ghost") == [] and store.telemetry("robot-revoked") == []
