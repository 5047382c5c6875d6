"""The store reads and writes the rollout gates use, on SQLite and a real PostgreSQL:
one bulk window read of telemetry and of events for a wave's robots, what the soak
makes of them, and an audit entry written once per key."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.rollouts.readings import readings
from cloud.store import EventRecord, Store, TelemetryRecord
from fleet.update_core import ShadowResult, ShadowThresholds, shadow_summary

_names = itertools.count()
BUNDLE = {"name": "p", "version": "1.1.0", "sequence": 2}
T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'plane.db'}"
    else:
        url = str(request.getfixturevalue("postgres").create_database(f"gates_{next(_names)}"))
    s = Store.open(url)
    s.add_devices_bulk([(f"r{i:04d}", f"{i:064x}", {"g": "x"}) for i in range(1200)])
    yield s
    s.close()


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def test_the_window_reads_match_the_per_device_reads(store: Store) -> None:
    """Differential: the bulk read against `telemetry` device by device, with more
    robots than one IN list holds."""
    ids = [f"r{i:04d}" for i in range(1200)]
    seq = itertools.count(1)
    for i, d in enumerate(ids[:1100:7]):
        pts = [
            TelemetryRecord(
                at=at(k * 10),
                loop_p99_ms=1.0 + i % 5,
                safety_interventions=k,
                extra={"ticks": 500 * k, "deadline_misses": k},
            )
            for k in range(8)
        ]
        store.record_telemetry(d, next(seq), pts)
    got = store.telemetry_window(ids, at(15), at(55))
    assert set(got) == set(ids)
    for d in ids:
        one = [p for p in store.telemetry(d, since=at(15)) if p.at <= at(55)]
        assert got[d] == one
        assert all(at(15) <= p.at <= at(55) for p in got[d])
    assert sum(len(v) for v in got.values()) == len(ids[:1100:7]) * 4  # 20, 30, 40, 50 s
    assert store.telemetry_window([], at(0), at(99)) == {}
    # with extra_keys the database reads just those keys; the rest is the same
    keys = ("ticks", "deadline_misses", "absent")
    narrow = store.telemetry_window(ids, at(15), at(55), extra_keys=keys)
    for d in ids:
        assert [(p.at, p.loop_p99_ms) for p in narrow[d]] == [(p.at, p.loop_p99_ms) for p in got[d]]
        assert [p.extra for p in narrow[d]] == [
            {k: (p.extra or {}).get(k) for k in keys} for p in got[d]
        ]


def test_extra_keys_read_back_any_json_scalar(store: Store) -> None:
    values = [7, 2.5, "text", None, {"nested": 1}]
    store.record_telemetry(
        "r0001", 1, [TelemetryRecord(at=at(i), extra={"v": v}) for i, v in enumerate(values)]
    )
    got = store.telemetry_window(["r0001"], at(0), at(10), extra_keys=("v",))["r0001"]
    read = [p.extra["v"] for p in got]  # type: ignore[index]
    assert read[:4] == [7, 2.5, "text", None]
    assert read[4] is not None  # an object comes back in the database's own text


def test_the_events_window_and_the_readings_the_soak_judges(store: Store) -> None:
    seq = itertools.count(1)
    summary = shadow_summary(
        ShadowResult(
            ticks=100, divergence_max=0.125, nan_rate=0.0, latency_p99_ms=0.3, envelope_violations=0
        ),
        ShadowThresholds(),
    )
    events = [
        EventRecord("r0001", next(seq), at(5), "update", "SWITCHING", "OK", summary, BUNDLE),
        EventRecord(
            "r0001",
            next(seq),
            at(6),
            "update",
            "SWITCHING",
            "OK",
            summary,
            {**BUNDLE, "name": "other"},
        ),  # another bundle: not this one's
        EventRecord("r0001", next(seq), at(20), "update", "FAILED", "DOWNLOAD_FAILED", "", None),
        EventRecord("r0002", next(seq), at(30), "update", "COMMITTED", "OK", "", BUNDLE),
        EventRecord("r0002", next(seq), at(99), "update", "FAILED", "HEALTH_CRASH", "", BUNDLE),
    ]
    for ev in events:
        assert store.record_event(ev)
    got = store.events_window(["r0001", "r0002", "r0003"], at(0), at(60))
    assert [e.sequence for e in got["r0001"]] == [1, 2, 3]
    assert [e.state for e in got["r0002"]] == ["COMMITTED"] and got["r0003"] == []
    store.record_telemetry(
        "r0002",
        1,
        [
            TelemetryRecord(
                at=at(k),
                loop_p99_ms=2.5,
                safety_interventions=1,
                extra={"ticks": 50 * k, "deadline_misses": 0, "x": "junk"},
            )
            for k in range(0, 60, 10)
        ],
    )
    r = readings(store, ["r0001", "r0002"], T0.timestamp(), at(60).timestamp(), BUNDLE)
    assert r.shadow == {"r0001": [(at(5).timestamp(), 0.125)], "r0002": []}
    assert r.errors == {"r0001": [at(20).timestamp()], "r0002": []}
    assert [s.ticks for s in r.samples["r0002"]] == [0, 50 * 10, 50 * 20, 50 * 30, 50 * 40, 50 * 50]
    assert {s.latency_p99_ms for s in r.samples["r0002"]} == {2.5}


def test_an_audit_entry_is_written_once_per_key(store: Store) -> None:
    assert store.audit_once("k1", "rollout-engine", "rollout.abort_threshold", "ro-1", {"a": 1})
    assert not store.audit_once("k1", "rollout-engine", "rollout.abort_threshold", "ro-1", {"a": 2})
    assert store.audit_once("k2", "rollout-engine", "rollout.abort_threshold", "ro-1", {"a": 3})
    assert store.audit_once("k1", "rollout-engine", "rollout.abort_threshold", "ro-2", {"a": 4})
    got = [
        (a.target, a.detail)
        for a in store.audit_log(limit=10)
        if a.action == "rollout.abort_threshold"
    ]
    assert sorted(got, key=str) == sorted(
        [
            ("ro-1", {"a": 1, "key": "k1"}),
            ("ro-1", {"a": 3, "key": "k2"}),
            ("ro-2", {"a": 4, "key": "k1"}),
        ],
        key=str,
    )
