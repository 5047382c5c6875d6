"""Batched ingest writes (telemetry, events, presence) on SQLite and on a real
PostgreSQL: exactly once per (device, sequence), unknown and revoked devices refused,
health = the newest point, and the same outcome as writing one message at a time."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.store import Store, TelemetryRecord
from cloud.store.ingest_batch import record_events_many, record_telemetry_many, set_online_many
from cloud.store.updates import EventRecord
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


@pytest.fixture(scope="module")
def pg_store(postgres: Postgres) -> Iterator[Store]:
    s = Store.open(postgres.create_database(f"ingest_copy_{uuid.uuid4().hex[:8]}"))
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


def _ev(dev: str, seq: int, state: str, kind: str = "update") -> EventRecord:
    return EventRecord(dev, seq, T0 + dt.timedelta(seconds=seq), kind, state, "OK", f"at {seq}")


def test_events_batch_stores_each_once_and_the_last_update_event_sets_the_state(
    store: Store,
) -> None:
    got = record_events_many(
        store,
        [
            _ev("robot-1", 1, "DOWNLOADING"),
            _ev("robot-1", 1, "DOWNLOADING"),  # duplicate inside the batch
            _ev("robot-1", 2, "COMMITTED"),
            _ev("robot-1", 3, "", kind="log"),  # not an update: the state stays
            _ev("robot-2", 1, "FAILED"),
            _ev("ghost", 1, "COMMITTED"),
            _ev("robot-revoked", 1, "COMMITTED"),
        ],
    )
    assert got == [True, False, True, True, True, False, False]
    assert record_events_many(store, [_ev("robot-1", 2, "COMMITTED")]) == [False]
    r1 = store.require_device("robot-1")
    assert (r1.update_state, r1.update_reason) == ("COMMITTED", "OK")
    assert store.require_device("robot-2").update_state == "FAILED"
    assert [e.sequence for e in store.events("robot-1")] == [1, 2, 3]
    assert store.events("ghost") == [] and store.events("robot-revoked") == []


def test_presence_batch_last_message_per_device_wins_and_revoked_stay_offline(
    store: Store,
) -> None:
    got = set_online_many(
        store,
        [
            ("robot-1", True, T0, "1.0"),
            ("robot-1", False, T0 + dt.timedelta(seconds=1), ""),
            ("robot-2", True, T0, "2.0"),
            ("robot-revoked", True, T0, ""),
            ("ghost", True, T0, ""),
        ],
    )
    assert got == [True, True, True, False, False]
    r1, r2 = store.require_device("robot-1"), store.require_device("robot-2")
    assert (r1.online, r1.runtime_version) == (False, "1.0")
    assert (r2.online, r2.runtime_version) == (True, "2.0")
    assert store.require_device("robot-revoked").online is False


# A random stream of update events (duplicates, unknown and revoked devices included),
# cut into random batches: the batched writer must leave the store exactly as writing
# the events one at a time does.
_streams = st.lists(
    st.tuples(
        st.sampled_from(["robot-1", "robot-2", "robot-revoked", "ghost"]),
        st.integers(1, 6),
        st.sampled_from(["DOWNLOADING", "COMMITTED", "FAILED", ""]),
        st.sampled_from(["update", "log"]),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=_streams, cuts=st.lists(st.integers(1, 8), max_size=8))
def test_batched_events_agree_with_one_at_a_time(
    store: Store, stream: list[tuple[str, int, str, str]], cuts: list[int]
) -> None:
    run = uuid.uuid4().hex[:8]  # fresh devices per example on the shared store
    for side in "ab":
        for d in ("robot-1", "robot-2", "robot-revoked"):
            store.add_device(f"{d}-{run}-{side}", uuid.uuid4().hex)
        store.revoke_device(f"robot-revoked-{run}-{side}")

    def events(side: str) -> list[EventRecord]:
        return [
            _ev(f"{d}-{run}-{side}" if d != "ghost" else f"ghost-{run}", q, s, k)
            for d, q, s, k in stream
        ]

    one = [store.record_event(e) for e in events("a")]
    batched: list[bool] = []
    rest = events("b")
    for n in [*cuts, len(rest)]:
        batched += record_events_many(store, rest[:n])
        rest = rest[n:]
    assert batched == one
    for d in ("robot-1", "robot-2", "robot-revoked"):
        a, b = store.require_device(f"{d}-{run}-a"), store.require_device(f"{d}-{run}-b")
        assert (a.update_state, a.update_reason, a.update_detail) == (
            b.update_state,
            b.update_reason,
            b.update_detail,
        )
        ka = [(e.sequence, e.kind, e.state) for e in store.events(f"{d}-{run}-a")]
        kb = [(e.sequence, e.kind, e.state) for e in store.events(f"{d}-{run}-b")]
        assert ka == kb


# Telemetry streams (duplicates, out-of-order points, update states, bundles, unknown
# and revoked devices) cut into random batches: the batched writer (one statement per
# step on PostgreSQL) must leave the devices and points as writing one at a time does.
_points = st.lists(
    st.tuples(
        st.integers(0, 50),  # minutes after T0
        st.floats(0, 1e6, allow_nan=False),
        st.sampled_from(["", "SHADOWING", "RUNNING", "FAILED"]),
        st.sampled_from([None, "pendulum", "cart"]),
    ),
    max_size=3,
)
_telemetry_streams = st.lists(
    st.tuples(
        st.sampled_from(["robot-1", "robot-2", "robot-revoked", "ghost"]),
        st.integers(1, 6),
        _points,
    ),
    max_size=20,
)


def _records(points: list[tuple[int, float, str, str | None]]) -> list[TelemetryRecord]:
    return [
        TelemetryRecord(
            at=T0 + dt.timedelta(minutes=m, microseconds=7),
            loop_p99_ms=p99,
            extra={"ticks": m, "interventions": {"cl\\amp\t\n": 1}},
            update_state=state,
            active_bundle={"name": b, "version": "1"} if b else None,
        )
        for m, p99, state, b in points
    ]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=_telemetry_streams, cuts=st.lists(st.integers(1, 8), max_size=8))
def test_batched_telemetry_agrees_with_one_at_a_time(
    store: Store,
    stream: list[tuple[str, int, list[tuple[int, float, str, str | None]]]],
    cuts: list[int],
) -> None:
    run = uuid.uuid4().hex[:8]
    for side in "ab":
        for d in ("robot-1", "robot-2", "robot-revoked"):
            store.add_device(f"{d}-{run}-{side}", uuid.uuid4().hex)
        store.revoke_device(f"robot-revoked-{run}-{side}")
    now = dt.datetime.now(dt.UTC)

    def name(d: str, side: str) -> str:
        return f"{d}-{run}-{side}" if d != "ghost" else f"ghost-{run}"

    one = [store.record_telemetry(name(d, "a"), q, _records(p), now) for d, q, p in stream]
    batched: list[bool] = []
    rest = [(name(d, "b"), q, _records(p), now) for d, q, p in stream]
    for n in [*cuts, len(rest)]:
        batched += record_telemetry_many(store, rest[:n])
        rest = rest[n:]
    assert batched == one
    for d in ("robot-1", "robot-2"):
        a, b = store.require_device(f"{d}-{run}-a"), store.require_device(f"{d}-{run}-b")
        assert (a.health, a.update_state, a.active_bundle, a.last_seen) == (
            b.health,
            b.update_state,
            b.active_bundle,
            b.last_seen,
        )
        assert store.telemetry(f"{d}-{run}-a") == store.telemetry(f"{d}-{run}-b")


_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=8)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    device=_text,
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=6, max_size=6),
    count=st.integers(0, 2**63 - 1),
    extra=st.none()
    | st.dictionaries(
        _text, _text | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    ),
    micros=st.integers(0, 10**12),
)
def test_copy_text_stores_the_rows_the_adapted_copy_stores(
    pg_store: Store,
    device: str,
    values: list[float],
    count: int,
    extra: dict[str, object] | None,
    micros: int,
) -> None:
    """`copy_records` builds COPY's text itself; what it stores must be what
    `copy_points` (psycopg adapting each value) stores, whatever the strings hold."""
    from cloud.store.ingest_batch import T, _point_row, copy_points, copy_records

    p = TelemetryRecord(
        T0 + dt.timedelta(microseconds=micros),
        *values[:3],
        count,  # type: ignore[arg-type]
        *values[3:],
        extra=extra,
    )
    tag = f"{device}{uuid.uuid4().hex}"
    store = pg_store
    with store.engine.begin() as conn:
        copy_records(conn, [(f"a{tag}", 3, p)])
        copy_points(conn, [_point_row(f"b{tag}", 3, p)])
    with store.engine.connect() as conn:
        rows = {
            r.device_id[0]: {k: v for k, v in r._mapping.items() if k not in ("id", "device_id")}
            for r in conn.execute(T.select().where(T.c.device_id.in_([f"a{tag}", f"b{tag}"])))
        }
    assert rows["a"] == rows["b"]


def test_a_device_revoked_while_its_batch_is_written_stores_nothing_of_that_batch(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL locks the device rows only for the batch's last step: a revocation
    committed in between (by another connection, not held up) fails the batch as a
    conflict, nothing of it is stored, and written again the device's data is refused."""
    from cloud.store import ConflictError, ingest_batch

    run = uuid.uuid4().hex[:8]
    kept, revoked = f"robot-kept-{run}", f"robot-gone-{run}"
    for d in (kept, revoked):
        pg_store.add_device(d, uuid.uuid4().hex)
    real = ingest_batch._add_batches

    def revoke_meanwhile(conn: object, keys: object) -> object:
        added = real(conn, keys)  # type: ignore[arg-type]
        pg_store.revoke_device(revoked)  # its own transaction: must not wait for ours
        return added

    monkeypatch.setattr(ingest_batch, "_add_batches", revoke_meanwhile)
    now = dt.datetime.now(dt.UTC)
    writes = [(kept, 1, _pt(1, 1.0), now), (revoked, 1, _pt(1, 1.0), now)]
    with pytest.raises(ConflictError):
        record_telemetry_many(pg_store, writes)
    assert pg_store.telemetry(kept) == [] and pg_store.telemetry(revoked) == []
    monkeypatch.setattr(ingest_batch, "_add_batches", real)
    assert record_telemetry_many(pg_store, writes) == [True, False]
    assert len(pg_store.telemetry(kept)) == 1 and pg_store.telemetry(revoked) == []
