"""A plane that dies between a wave's side effect and its save applies the wave once.

The driver runs in a child process on a real SQLite store and is killed (``os._exit``)
right after the desired state was set, before the pass's rollout status is saved; a
fresh driver on the same store then carries the rollout on.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import time
import types
from pathlib import Path
from typing import Any

import pytest

from cloud.rollouts import retry
from cloud.rollouts.engine import Rollout, RolloutSpec
from cloud.rollouts.gates import GateSpec
from cloud.rollouts.service import RolloutService
from cloud.store import BundleRecord, EventRecord, Store

BUNDLE = {
    "name": "p",
    "version": "1.1.0",
    "sequence": 2,
    "target": "p-1.1.0.efb",
    "sha256": "ab" * 32,
    "length": 10,
}
DEVICES = ("d0", "d1", "d2")


def service(store: Store) -> RolloutService:
    home = types.SimpleNamespace(trust=Path(str(store.engine.url.database)).parent / "trust")
    plane = types.SimpleNamespace(store=store, home=home, config=None)
    return RolloutService(plane, hints=False)  # type: ignore[arg-type]


def prepare(url: str, gates: dict[str, object], label_selector: str = "") -> None:
    store = Store.open(url)
    store.add_devices_bulk([(d, f"{i:02d}" * 32, {"g": "x"}) for i, d in enumerate(DEVICES)])
    store.add_bundle(BundleRecord("p", "1.1.0", 2, "ab" * 32, 10, "p-1.1.0.efb"))
    spec = RolloutSpec(
        BUNDLE, DEVICES, (1.0,), 1.0, 600, label_selector=label_selector, gates=gates
    )
    service(store)._save(Rollout.create("ro-x", spec, now=time.time(), created_by="test"))
    store.close()


def crash_after_side_effect(url: str, where: str) -> None:
    """Child: one driver pass that dies as soon as the side effect is done."""
    if where == "dispatch":
        Rollout.dispatched = lambda *a, **k: os._exit(3)  # type: ignore[method-assign]
    elif where == "abort":  # the rollback is done; its note and the save are not
        note = Rollout.note

        def crash(r: Rollout, now: float, reason: str) -> None:
            if reason.startswith("rolled back"):
                os._exit(3)
            note(r, now, reason)

        Rollout.note = crash  # type: ignore[method-assign]
    elif where == "join":  # the newcomer's desired state is set; its join is not saved
        Rollout.join = lambda *a, **k: os._exit(3)  # type: ignore[method-assign]
    elif where == "audit":  # the abort's audit entry is written; nothing after it is
        audit_once = Store.audit_once

        def crash_audit(self: Store, *args: Any, **kwargs: Any) -> bool:
            audit_once(self, *args, **kwargs)
            os._exit(3)

        Store.audit_once = crash_audit  # type: ignore[method-assign]
    else:
        retry.redispatched = lambda *a, **k: os._exit(3)  # type: ignore[assignment]
    store = Store.open(url)
    service(store)._pass()
    os._exit(0)  # the crash did not happen: the test fails on the exit code


def run_crashing(url: str, where: str) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=crash_after_side_effect, args=(url, where)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 3


def dispatches(store: Store) -> list[str]:
    return [
        a.actor
        for a in store.audit_log(limit=1000)
        if a.action == "device.set_desired" and a.actor.startswith("rollout:ro-x")
    ]


def unattested() -> dict[str, object]:
    return GateSpec(allow_unattested=True, override_by="test").to_dict()


def test_a_wave_cut_off_before_its_save_is_dispatched_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/plane.db"
    prepare(url, unattested())
    run_crashing(url, "dispatch")

    store = Store.open(url)  # the restarted plane
    try:
        assert {d: store.get_device(d).desired_generation for d in DEVICES} == dict.fromkeys(  # type: ignore[union-attr]
            DEVICES, 1
        )
        service(store)._pass()
        service(store)._pass()
        rec = store.get_rollout("ro-x")
        assert rec is not None
        r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
        assert r.state == "running" and r.waves[0].state == "running"
        assert "intent" not in r.gates
        assert r.waves[0].previous == dict.fromkeys(DEVICES)
        for d in DEVICES:
            dev = store.get_device(d)
            assert dev is not None and dev.desired_generation == 1
            assert (dev.desired_bundle or {})["version"] == "1.1.0"
        assert dispatches(store) == ["rollout:ro-x"]
        said = [h["reason"] for h in r.history if "dispatched" in h["reason"]]
        assert said == ["wave 0 dispatched to 3 device(s)"]
    finally:
        store.close()


def test_a_retry_cut_off_before_its_save_is_counted_and_applied_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/plane.db"
    gates = unattested()
    gates["retry"] = retry.RetryPolicy(max_tries=3, base_s=5.0, max_s=5.0).to_dict()
    prepare(url, gates)
    store = Store.open(url)
    try:
        service(store)._pass()  # dispatches the wave (generation 1)
        store.record_event(
            EventRecord(
                "d0", 1, dt.datetime.now(dt.UTC), "update", "FAILED", "DOWNLOAD_FAILED", "", BUNDLE
            )
        )
        service(store)._pass()  # schedules d0's retry
        rec = store.get_rollout("ro-x")
        assert rec is not None and retry.scheduled(
            Rollout.from_dicts(rec.id, rec.spec, rec.status), "d0"
        )
        r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
        r.gates["retries"]["d0"]["next_at"] = time.time() - 1  # due now
        service(store)._save(r)
    finally:
        store.close()
    run_crashing(url, "retry")

    store = Store.open(url)
    try:
        assert store.get_device("d0").desired_generation == 2  # type: ignore[union-attr]
        service(store)._pass()
        service(store)._pass()
        rec = store.get_rollout("ro-x")
        assert rec is not None
        r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
        assert store.get_device("d0").desired_generation == 2  # type: ignore[union-attr]
        assert retry.tries(r, "d0") == 2  # one retry counted
        assert "intent" not in r.gates
        assert sorted(dispatches(store)) == ["rollout:ro-x", "rollout:ro-x (retry)"]
    finally:
        store.close()


@pytest.mark.parametrize("where", ["abort", "audit"])
def test_an_abort_threshold_cut_off_after_its_rollback_is_applied_once(
    tmp_path: Path, where: str
) -> None:
    """Cut off after the rollback (before its note and save), or right after the audit
    entry is written (before the rollback): one rollback, one audit entry."""
    url = f"sqlite:///{tmp_path}/plane.db"
    gates = unattested()
    gates["abort_threshold"] = 0.0  # any failed robot aborts
    prepare(url, gates)
    old = {**BUNDLE, "version": "1.0.0", "sequence": 1, "target": "p-1.0.0.efb"}
    store = Store.open(url)
    try:
        store.set_desired(list(DEVICES), old, actor="setup")
        service(store)._pass()  # dispatches the wave (generation 2)
        store.record_event(
            EventRecord("d0", 1, dt.datetime.now(dt.UTC), "update", "FAILED", "VERIFY", "", BUNDLE)
        )
    finally:
        store.close()
    run_crashing(url, where)

    store = Store.open(url)
    try:
        gens = {d: store.get_device(d).desired_generation for d in DEVICES}  # type: ignore[union-attr]
        # rolled back before the crash, or not yet
        assert gens == dict.fromkeys(DEVICES, 3 if where == "abort" else 2)
        service(store)._pass()
        service(store)._pass()
        rec = store.get_rollout("ro-x")
        assert rec is not None and rec.state == "aborted"
        r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
        assert "intent" not in r.gates and r.gates["abort"]["failed"] == ["d0"]
        for d in DEVICES:
            dev = store.get_device(d)
            assert dev is not None and dev.desired_generation == 3
            assert (dev.desired_bundle or {})["version"] == "1.0.0"
        actions = [(a.actor, a.action) for a in store.audit_log(limit=1000)]
        assert actions.count(("rollout-engine", "rollout.abort_threshold")) == 1
        assert actions.count(("rollout:ro-x (rollback of ro-x)", "device.set_desired")) == 1
        said = [h["reason"] for h in r.history if h["reason"].startswith("rolled back")]
        assert said == ["rolled back 3 device(s) to their previous bundle"]
    finally:
        store.close()


def test_a_device_joining_cut_off_before_its_save_is_pointed_at_the_bundle_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/plane.db"
    prepare(url, unattested(), label_selector="g=x")
    store = Store.open(url)
    try:
        service(store)._pass()  # dispatches the wave
        store.add_devices_bulk([("d3", "33" * 32, {"g": "x"})])  # joins the label
    finally:
        store.close()
    run_crashing(url, "join")

    store = Store.open(url)
    try:
        assert store.get_device("d3").desired_generation == 1  # type: ignore[union-attr]
        service(store)._pass()
        service(store)._pass()
        rec = store.get_rollout("ro-x")
        assert rec is not None
        r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
        assert "intent" not in r.gates
        assert r.waves[0].device_ids == [*DEVICES, "d3"] and r.waves[0].joined == ["d3"]
        assert r.waves[0].previous["d3"] is None
        dev = store.get_device("d3")
        assert dev is not None and dev.desired_generation == 1
        assert (dev.desired_bundle or {})["version"] == "1.1.0"
        assert sorted(dispatches(store)) == ["rollout:ro-x", "rollout:ro-x (joined)"]
    finally:
        store.close()
