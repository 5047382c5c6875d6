"""A plane that dies after seeing a robot held, before saving it, waits for the same
robot from the same moment after its restart, and dispatches nothing twice.

The driver runs in a child process on a real SQLite store and is killed (``os._exit``)
as soon as it recorded the hold; a fresh driver on the same store carries on."""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing
import os
from pathlib import Path

from cloud.rollouts.engine import Rollout
from cloud.store import EventRecord, Store
from tests.rollouts.test_exactly_once import (
    BUNDLE,
    DEVICES,
    dispatches,
    prepare,
    service,
    unattested,
)

LOCK = ("UPDATE_LOCKED", "locked by arm: mid-pick")
_seq = itertools.count(1)


def event(store: Store, device_id: str, state: str, at: dt.datetime, reason: str = "") -> None:
    assert store.record_event(
        EventRecord(
            device_id=device_id,
            sequence=next(_seq),
            at=at,
            kind="update",
            state=state,
            reason_code=reason,
            detail=LOCK[1] if reason else "",
            bundle={k: BUNDLE[k] for k in ("name", "version", "sequence")},
        )
    )


def crash_after_hold(url: str) -> None:
    hold = Rollout.hold

    def crash(r: Rollout, *args: object, **kwargs: object) -> bool:
        hold(r, *args, **kwargs)  # type: ignore[arg-type]
        os._exit(3)

    Rollout.hold = crash  # type: ignore[method-assign]
    store = Store.open(url)
    service(store)._pass()
    os._exit(0)  # no hold seen: the test fails on the exit code


def load(store: Store) -> Rollout:
    rec = store.get_rollout("ro-x")
    assert rec is not None
    return Rollout.from_dicts(rec.id, rec.spec, rec.status)


def test_a_hold_cut_off_before_its_save_is_seen_again_from_the_same_moment(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/plane.db"
    prepare(url, {**unattested(), "max_held_s": 3600.0})
    store = Store.open(url)
    try:
        service(store)._pass()  # wave 0 goes out
        assert load(store).waves[0].state == "running"
        held_at = dt.datetime.now(dt.UTC)
        event(store, DEVICES[0], "HELD", held_at, LOCK[0])
    finally:
        store.close()

    child = multiprocessing.get_context("spawn").Process(target=crash_after_hold, args=(url,))
    child.start()
    child.join(60)
    assert child.exitcode == 3
    store = Store.open(url)  # the restarted plane
    try:
        assert not load(store).waves[0].held  # the crashed pass saved nothing
        service(store)._pass()
        r = load(store)
        h = r.waves[0].held[DEVICES[0]]
        assert (h["reason"], h["detail"]) == LOCK
        assert h["since"] == held_at.timestamp()  # the robot's moment, not the plane's
        service(store)._pass()
        assert load(store).waves[0].held[DEVICES[0]]["since"] == held_at.timestamp()

        now = dt.datetime.now(dt.UTC)
        for d in DEVICES[1:]:
            event(store, d, "COMMITTED", now)
        service(store)._pass()
        r = load(store)
        assert r.state == "running" and DEVICES[0] in r.waves[0].held
        event(store, DEVICES[0], "SWITCHING", now)
        event(store, DEVICES[0], "COMMITTED", now + dt.timedelta(seconds=1))
        service(store)._pass()
        r = load(store)
        assert r.state == "completed", r.history
        assert dispatches(store) == ["rollout:ro-x"]
        for d in DEVICES:
            dev = store.get_device(d)
            assert dev is not None and dev.desired_generation == 1
        held_notes = [x["reason"] for x in r.history if " held in wave " in x["reason"]]
        assert held_notes == [f"{DEVICES[0]} held in wave 0 ({LOCK[0]}: {LOCK[1]})"]
    finally:
        store.close()
