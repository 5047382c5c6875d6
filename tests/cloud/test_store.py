"""The store API, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from cloud.store import (
    BundleRecord,
    ConflictError,
    EventRecord,
    NotFoundError,
    RolloutRecord,
    StaleWriteError,
    Store,
    TelemetryRecord,
    parse_label_selector,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _bundle(version: str = "1.0.0", sequence: int = 1) -> BundleRecord:
    return BundleRecord(
        name="pendulum",
        version=version,
        sequence=sequence,
        efb_sha256="ab" * 32,
        size_bytes=123,
        target_path=f"bundles/pendulum-{version}.efb",
    )


def test_migrations_are_idempotent(store: Store, store_url: str) -> None:
    store.add_device("d1", "fp1")
    again = Store.open(store_url)
    assert again.require_device("d1").cert_fingerprint == "fp1"
    again.close()


def test_label_selector_and_text_filter_with_keyset_pages(store: Store) -> None:
    for i in range(25):
        store.add_device(
            f"robot-{i:02d}", f"fp{i}", {"site": "lab" if i % 2 else "yard", "role": "arm"}
        )
    page = store.list_devices({"site": "lab", "role": "arm"}, limit=5)
    assert page.total == 12
    seen = [d.id for d in page.devices]
    while page.next_after:
        page = store.list_devices({"site": "lab", "role": "arm"}, limit=5, after=page.next_after)
        seen += [d.id for d in page.devices]
    assert seen == [f"robot-{i:02d}" for i in range(1, 25, 2)]
    assert [d.id for d in store.list_devices(text="-2").devices] == [
        f"robot-{i}" for i in range(20, 25)
    ]
    assert store.list_devices({"site": "moon"}).total == 0
    # LIKE wildcards in the text are literal
    assert store.list_devices(text="%").total == 0


def test_parse_label_selector_rejects_garbage() -> None:
    assert parse_label_selector("a=1, b=2") == {"a": "1", "b": "2"}
    with pytest.raises(ValueError, match="not key=value"):
        parse_label_selector("a")


def test_duplicate_device_is_a_conflict(store: Store) -> None:
    store.add_device("d1", "fp1")
    with pytest.raises(ConflictError, match="already exists"):
        store.add_device("d1", "fp2")
    assert store.require_device("d1").cert_fingerprint == "fp1"


def test_revoke_marks_device_and_fingerprint_and_is_audited(store: Store) -> None:
    store.add_device("d1", "fp1")
    rec = store.revoke_device("d1", actor="operator:alice")
    assert rec.revoked and store.is_revoked("fp1")
    assert store.device_credentials("d1") == ("fp1", True)
    store.revoke_device("d1")  # idempotent
    assert store.audit_log(limit=1)[0].action == "device.revoke"
    with pytest.raises(NotFoundError):
        store.revoke_device("nope")


def test_telemetry_batches_are_deduplicated_by_device_and_sequence(store: Store) -> None:
    store.add_device("d1", "fp1")
    seen: list[str] = []
    store.subscribe(seen.append)
    pts = [
        TelemetryRecord(at=NOW + dt.timedelta(seconds=i), loop_p99_ms=1.0 + i, update_state="IDLE")
        for i in range(3)
    ]
    assert store.record_telemetry("d1", 7, pts) is True
    assert store.record_telemetry("d1", 7, pts) is False  # QoS 1 redelivery
    assert store.record_telemetry("d1", 8, pts[:1]) is True
    got = store.telemetry("d1")
    assert [p.loop_p99_ms for p in got] == [1.0, 1.0, 2.0, 3.0]
    dev = store.require_device("d1")
    assert dev.health is not None and dev.health["loop_p99_ms"] == 3.0
    assert dev.update_state == "IDLE" and dev.last_seen is not None
    assert seen == ["d1", "d1"]
    # Retention removes whole UTC days: a cutoff inside the points' day keeps them all.
    store.prune_telemetry(NOW + dt.timedelta(seconds=1, microseconds=1))
    assert len(store.telemetry("d1")) == 4
    store.prune_telemetry(NOW + dt.timedelta(days=1))
    assert store.telemetry("d1") == []


def test_events_are_deduplicated_and_move_update_state(store: Store) -> None:
    store.add_device("d1", "fp1")
    ev = EventRecord("d1", 1, NOW, "update", "ROLLED_BACK", "HEALTH_WINDOW_FAILED", "p99 high")
    assert store.record_event(ev)
    assert not store.record_event(ev)
    dev = store.require_device("d1")
    assert (dev.update_state, dev.update_reason) == ("ROLLED_BACK", "HEALTH_WINDOW_FAILED")
    assert dev.update_detail == "p99 high"  # the robot's detail, kept with its reason
    assert [e.reason_code for e in store.events("d1")] == ["HEALTH_WINDOW_FAILED"]
    store.record_event(EventRecord("d1", 2, NOW, "update", "REFRESHING", "OK"))
    assert store.require_device("d1").update_detail == ""  # a new update starts clean


@pytest.mark.parametrize("path", ["record_telemetry", "record_telemetry_many"])
def test_a_late_telemetry_sample_never_replaces_an_updates_last_word(
    store: Store, path: str
) -> None:
    """The robot's spool may deliver a sample taken while shadowing after the FAILED
    event: the device keeps FAILED and its reason until its next update event."""
    from cloud.store.ingest_batch import record_telemetry_many

    def sample(seq: int, state: str) -> None:
        point = TelemetryRecord(at=NOW + dt.timedelta(seconds=seq), update_state=state)
        if path == "record_telemetry":
            assert store.record_telemetry("d1", seq, [point])
        else:
            assert record_telemetry_many(store, [("d1", seq, [point], NOW)]) == [True]

    store.add_device("d1", "fp1")
    sample(1, "SHADOWING")
    assert store.require_device("d1").update_state == "SHADOWING"  # progress from telemetry
    store.record_event(EventRecord("d1", 1, NOW, "update", "FAILED", "SHADOW_DIVERGENCE", "x"))
    sample(2, "SHADOWING")  # sampled before the failure, delivered after it
    sample(3, "IDLE")
    dev = store.require_device("d1")
    assert (dev.update_state, dev.update_reason, dev.update_detail) == (
        "FAILED",
        "SHADOW_DIVERGENCE",
        "x",
    )
    store.record_event(EventRecord("d1", 2, NOW, "update", "REFRESHING", "OK"))
    sample(4, "STAGING")  # a new update's progress shows again
    assert store.require_device("d1").update_state == "STAGING"


def test_presence_and_inventory(store: Store) -> None:
    store.add_device("d1", "fp1")
    assert store.set_online("d1", True, NOW, runtime_version="0.1.0")
    assert not store.set_online("ghost", True, NOW)
    dev = store.require_device("d1")
    assert dev.online and dev.last_seen == NOW and dev.runtime_version == "0.1.0"
    store.record_inventory(
        "d1",
        {"runtime_version": "0.2.0", "hardware_tags": ["cpu"], "active_bundle": {"name": "p"}},
    )
    dev = store.require_device("d1")
    assert dev.runtime_version == "0.2.0" and dev.hardware_tags == ["cpu"]
    assert dev.active_bundle == {"name": "p"}


def test_desired_state_generation_increases_and_unknown_ids_change_nothing(store: Store) -> None:
    store.add_device("d1", "fp1")
    store.add_device("d2", "fp2")
    ref = {"name": "pendulum", "version": "1.0.0", "sequence": 1}
    assert store.set_desired(["d1", "d2"], ref) == {"d1": 1, "d2": 1}
    assert store.set_desired(["d1"], ref) == {"d1": 2}
    with pytest.raises(NotFoundError, match="ghost"):
        store.set_desired(["d2", "ghost"], None)
    assert store.require_device("d2").desired_generation == 1
    assert store.require_device("d2").desired_bundle == ref


def test_bundle_version_and_sequence_are_unique(store: Store) -> None:
    store.add_bundle(_bundle("1.0.0", 1))
    with pytest.raises(ConflictError):
        store.add_bundle(_bundle("1.0.0", 2))
    with pytest.raises(ConflictError):
        store.add_bundle(_bundle("1.0.1", 1))
    store.add_bundle(_bundle("1.1.0", 2))
    latest = store.latest_bundle("pendulum")
    assert latest is not None and latest.version == "1.1.0"
    assert store.count_bundles() == 2
    store.delete_bundle("pendulum", "1.1.0")
    assert store.get_bundle("pendulum", "1.1.0") is None


def test_concurrent_inserts_of_one_bundle_version_have_one_winner(store: Store) -> None:
    results: list[str] = []
    barrier = threading.Barrier(4)

    def publish(i: int) -> None:
        barrier.wait()
        try:
            store.add_bundle(_bundle("2.0.0", 10 + i))
            results.append("won")
        except ConflictError:
            results.append("lost")

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost", "lost", "lost", "won"]
    assert store.count_bundles() == 1


def test_rollouts_round_trip(store: Store) -> None:
    rec = RolloutRecord("r1", "pendulum", "1.0.0", "running", {"waves": [0.1]}, {}, NOW, NOW, "op")
    assert store.put_rollout(rec, expect=0) == 1
    paused = RolloutRecord(
        "r1", "pendulum", "1.0.0", "paused", {"waves": [0.1]}, {"w": 1}, NOW, NOW, "op"
    )
    assert store.put_rollout(paused, expect=1) == 2
    got = store.get_rollout("r1")
    assert got is not None and got.state == "paused" and got.status == {"w": 1, "revision": 2}
    assert [r.id for r in store.list_rollouts()] == ["r1"]
    # a writer that read revision 1 (someone saved revision 2 since) writes nothing
    with pytest.raises(StaleWriteError, match="at revision 2, not 1"):
        store.put_rollout(rec, expect=1)
    with pytest.raises(StaleWriteError):
        store.put_rollout(rec, expect=0)  # "new" over an existing one
    got = store.get_rollout("r1")
    assert got is not None and got.state == "paused"
    assert store.put_rollout(rec) == 3  # no expectation: a plain replace


def test_devices_changed_since_sees_changes_but_not_heartbeats(store: Store) -> None:
    store.add_device("d1", "fp1")
    store.add_device("d2", "fp2")
    mark = max(u for _, u in store.devices_changed_since(NOW))
    store.touch("d1")  # presence heartbeat: not a change
    assert store.devices_changed_since(mark) == []
    store.set_online("d2", True)
    assert [i for i, _ in store.devices_changed_since(mark)] == ["d2"]


def test_data_from_unknown_or_revoked_devices_is_not_stored(store: Store) -> None:
    store.add_device("d1", "fp1")
    store.revoke_device("d1")
    point = [TelemetryRecord(at=NOW, loop_p99_ms=1.0)]
    assert not store.record_telemetry("d1", 1, point)
    assert not store.record_telemetry("ghost", 1, point)
    assert not store.record_event(EventRecord("ghost", 1, NOW, "update", "IDLE"))
    assert store.telemetry("d1") == [] and store.telemetry("ghost") == []
    assert store.events() == []


def test_records_do_not_share_mutable_state(store: Store) -> None:
    store.add_device("d1", "fp1", {"site": "lab"})
    store.set_desired(["d1"], {"name": "p", "nested": {"k": [1]}})
    first = store.require_device("d1")
    first.labels["site"] = "changed"
    assert first.desired_bundle is not None
    first.desired_bundle["nested"]["k"].append(2)
    again = store.require_device("d1")
    assert again.labels == {"site": "lab"}
    assert again.desired_bundle == {"name": "p", "nested": {"k": [1]}}


def test_concurrent_first_opens_migrate_once(store_url: str) -> None:
    """Several plane processes starting at once on a fresh database all come up."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def open_store() -> None:
        barrier.wait()
        try:
            Store.open(store_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_reads_see_commits_from_another_store_at_once(store: Store, store_url: str) -> None:
    store.add_device("d1", "fp1")
    assert not store.require_device("d1").revoked  # primes this thread's read path
    other = Store.open(store_url)
    try:
        other.revoke_device("d1")
        other.revoke_certificate("fp-op", "operator:olga")
    finally:
        other.close()
    assert store.require_device("d1").revoked
    assert store.is_revoked("fp-op")
