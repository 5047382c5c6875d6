"""The driver's outcome detection on a real store (SQLite), without a gRPC server."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.rollouts.engine import Rollout, RolloutSpec
from cloud.rollouts.gates import GateSpec
from cloud.rollouts.service import RolloutService
from cloud.store import BundleRecord, EventRecord, Store, TelemetryRecord

BUNDLE = {
    "name": "p",
    "version": "1.1.0",
    "sequence": 2,
    "target": "p-1.1.0.efb",
    "sha256": "ab" * 32,
    "length": 10,
}
_seq = itertools.count(1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path}/plane.db")
    s.add_devices_bulk([(f"d{i}", f"{i:02d}" * 32, {"g": "x"}) for i in range(3)])
    s.add_bundle(BundleRecord("p", "1.1.0", 2, "ab" * 32, 10, "p-1.1.0.efb"))
    yield s
    s.close()


def started(store: Store, n: int = 3) -> tuple[RolloutService, Rollout]:
    trust = Path(str(store.engine.url.database)).parent / "trust"  # no attestation keys
    home = types.SimpleNamespace(trust=trust)
    svc = RolloutService(types.SimpleNamespace(store=store, home=home, config=None), hints=False)
    # these bundles have no parity attestation: the override is explicit
    gates = GateSpec(allow_unattested=True, override_by="test").to_dict()
    spec = RolloutSpec(BUNDLE, tuple(f"d{i}" for i in range(n)), (1.0,), 1.0, 600, gates=gates)
    r = Rollout.create("ro-t", spec, now=time.time(), created_by="test")
    svc.step(r)  # starts and dispatches the only wave
    assert r.state == "running" and r.waves[0].dispatched_at is not None
    return svc, r


def event(
    store: Store, device: str, state: str, *, at: dt.datetime | None = None, **b: object
) -> None:
    bundle = {"name": "p", "version": "1.1.0", "sequence": 2, **b}
    assert store.record_event(
        EventRecord(
            device, next(_seq), at or dt.datetime.now(dt.UTC), "update", state, "r", "", bundle
        )
    )


def test_dispatch_sets_desired_state_and_remembers_the_previous_one(store: Store) -> None:
    store.set_desired(["d0"], {"name": "p", "version": "1.0.0", "sequence": 1})
    _svc, r = started(store)
    assert (store.get_device("d1").desired_bundle or {})["version"] == "1.1.0"  # type: ignore[union-attr]
    assert r.waves[0].previous["d0"] == {"name": "p", "version": "1.0.0", "sequence": 1}
    assert r.waves[0].previous["d1"] is None


def test_only_terminal_events_for_this_bundle_after_dispatch_count(store: Store) -> None:
    svc, r = started(store)
    event(store, "d0", "COMMITTED", at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    event(store, "d1", "COMMITTED", version="0.9.0", sequence=1)  # another bundle
    event(store, "d2", "DOWNLOADED")  # not terminal
    svc.step(r)
    assert r.waves[0].outcomes == {}
    event(store, "d0", "FAILED")
    event(store, "d1", "ROLLED_BACK")
    svc.step(r)
    assert {d: o["outcome"] for d, o in r.waves[0].outcomes.items()} == {
        "d0": "FAILED",
        "d1": "ROLLED_BACK",
    }


def test_a_device_reporting_the_bundle_active_and_committed_counts(store: Store) -> None:
    svc, r = started(store, n=1)
    store.record_telemetry(
        "d0",
        1,
        [
            TelemetryRecord(
                at=dt.datetime.now(dt.UTC),
                update_state="COMMITTED",
                active_bundle={"name": "p", "version": "1.1.0", "sequence": 2},
            )
        ],
    )
    svc.step(r)
    assert r.state == "completed"


def test_an_incremental_pass_checks_only_changed_devices(store: Store) -> None:
    svc, r = started(store)
    event(store, "d0", "COMMITTED")
    svc.step(r, dirty=set())
    assert r.waves[0].outcomes == {}  # not announced: not read
    svc.step(r, dirty={"d0"})
    assert list(r.waves[0].outcomes) == ["d0"]


def test_an_operators_change_over_a_save_made_meanwhile_is_read_again_and_reapplied(
    store: Store,
) -> None:
    """Two writers of one rollout (an operator on one replica, the driver on another):
    the operator's save over a revision someone saved after it read is refused, and
    its change is re-applied to what is stored now, so neither change is lost."""
    import asyncio

    svc, r = started(store)
    svc._save(r)

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    svc.plane.db = db  # type: ignore[attr-defined]
    calls = []

    def pause(mine: Rollout) -> None:
        calls.append(mine.revision)
        if len(calls) == 1:  # the driver saves its progress after the operator read
            theirs = svc._load("ro-t")
            theirs.note(time.time(), "the driver's note")
            svc._save(theirs)
        mine.pause(time.time(), "paused by ops")

    got, _ = asyncio.run(svc._change("ro-t", pause))
    assert len(calls) == 2 and calls[1] == calls[0] + 1  # read again, re-applied
    stored = svc._load("ro-t")
    assert stored.state == "paused" == got.state
    said = [h["reason"] for h in stored.history]
    assert "the driver's note" in said and "paused by ops" in said


def test_an_operators_abort_left_unfinished_is_finished_by_the_driver_once_abandoned(
    store: Store,
) -> None:
    """The replica serving an operator's abort with rollback saved its intent and
    stopped: the driver leaves a fresh one to that replica, and finishes (claiming it
    first) one older than ABANDONED_S: each device restored once."""
    from cloud.rollouts import service as service_mod

    old = {**BUNDLE, "version": "1.0.0", "sequence": 1}
    store.set_desired(["d0", "d1", "d2"], old)  # what the rollback points them back at
    svc, r = started(store)
    svc._save(r)
    restore = r.abort(time.time(), "ops", rollback=True)
    svc._intend(r, "abort", r.current, sorted(restore), restore=restore, actor="ops")
    gens = {d: store.get_device(d).desired_generation for d in restore}  # type: ignore[union-attr]
    svc._pass(None)  # fresh: the operator's replica is still at it
    assert svc._load("ro-t").gates.get("intent", {}).get("kind") == "abort"
    r = svc._load("ro-t")
    r.gates["intent"]["at"] = time.time() - service_mod.ABANDONED_S - 1
    svc._save(r)
    svc._pass(None)
    done = svc._load("ro-t")
    assert "intent" not in done.gates and done.state == "aborted"
    assert any("rolled back 3 device(s)" in h["reason"] for h in done.history)
    for d, gen in gens.items():  # restored once: one new generation each
        assert store.get_device(d).desired_generation == gen + 1, d  # type: ignore[union-attr]
    svc._pass(None)
    for d, gen in gens.items():
        assert store.get_device(d).desired_generation == gen + 1, d  # type: ignore[union-attr]
