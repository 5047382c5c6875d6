"""A driver pass reads the devices it judges in bulk (their rows and update events in a
few queries): it must come to exactly what the per-device read concludes."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.rollouts.outcomes import CLOCK_SKEW_S, device_report, report_of
from cloud.store import EventRecord, Store, TelemetryRecord

BUNDLE = {"name": "p", "version": "1.1.0", "sequence": 2}
OTHER = {"name": "p", "version": "1.0.0", "sequence": 1}
STATES = ("DOWNLOADING", "HELD", "COMMITTED", "FAILED", "ROLLED_BACK", "VERIFYING")
REASONS = ("", "UPDATE_LOCKED", "OUTSIDE_WINDOW", "DOWNLOAD_FAILED")
_ids = itertools.count()
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path_factory.mktemp('reads')}/plane.db")
    yield s
    s.close()


event = st.tuples(
    st.floats(-30.0, 30.0),  # seconds from the device's `since`
    st.sampled_from(STATES),
    st.sampled_from(REASONS),
    st.sampled_from((BUNDLE, OTHER, None)),
)
device = st.tuples(
    st.lists(event, max_size=8),
    st.booleans(),  # reports the bundle active and COMMITTED
    st.floats(0.0, 100.0),  # its `since`, seconds after the oldest one
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(device, min_size=1, max_size=6))
def test_the_bulk_read_comes_to_what_the_per_device_read_does(
    store: Store, fleet: list[tuple[list[tuple[float, str, str, object]], bool, float]]
) -> None:
    base = time.time() - 1000
    checks: list[tuple[str, float]] = []
    for events, active, offset in fleet:
        d = f"d{next(_ids)}"
        store.add_device(d, f"{next(_ids):064x}", {})
        since = base + offset
        for delta, state, reason, bundle in events:
            at = dt.datetime.fromtimestamp(since + delta, dt.UTC)
            b = dict(bundle) if isinstance(bundle, dict) else None
            store.record_event(EventRecord(d, next(_seq), at, "update", state, reason, "x", b))
        if active:  # what a robot's telemetry says: the bundle is active, committed
            point = TelemetryRecord(
                at=dt.datetime.now(dt.UTC), update_state="COMMITTED", active_bundle=dict(BUNDLE)
            )
            store.record_telemetry(d, next(_seq), [point])
        checks.append((d, since))
        if active and not events:  # the row alone says it
            assert device_report(store, d, BUNDLE, since) == (("COMMITTED", "", ""), None)
    ids = [d for d, _ in checks]
    start = dt.datetime.fromtimestamp(min(s for _, s in checks) - CLOCK_SKEW_S, dt.UTC)
    rows, events_of = store.devices_by_id(ids), store.update_events_since(ids, start)
    assert set(rows) == set(ids)
    for d, since in checks:
        assert report_of(events_of[d], rows.get(d), BUNDLE, since) == device_report(
            store, d, BUNDLE, since
        ), d


def test_a_device_not_in_the_fleet_is_absent_and_has_no_events(store: Store) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    assert store.devices_by_id(["nobody"]) == {}
    assert store.update_events_since(["nobody"], start) == {"nobody": []}
    assert report_of([], None, BUNDLE, time.time()) == (None, None)


def test_reads_are_chunked_past_500_devices(store: Store) -> None:
    ids = [f"bulk{i}" for i in range(1203)]
    store.add_devices_bulk([(d, f"{i + 10**6:064x}", {}) for i, d in enumerate(ids)])
    assert set(store.devices_by_id(ids)) == set(ids)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    assert len(store.update_events_since(ids, start)) == len(ids)
