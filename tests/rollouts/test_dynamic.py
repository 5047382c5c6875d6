"""Dynamic rollouts, the pure parts: a device joining the current (or last) wave, the
offline policy parsed and applied, both kept across a reload."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.rollouts.dynamic import OfflinePolicy, parse_duration, skip_reason
from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError, TransitionError
from cloud.store import DeviceRecord

BUNDLE = {"name": "p", "version": "1.1.0", "sequence": 2}
OLD = {"name": "p", "version": "1.0.0", "sequence": 1}


def make() -> Rollout:
    r = Rollout.create(
        "ro-d",
        RolloutSpec(BUNDLE, ("a", "b", "c", "d"), (0.5, 1.0), 0.0, 60),
        now=0.0,
        created_by="x",
    )
    r.start(0.0)
    return r


def reload(r: Rollout) -> Rollout:
    return Rollout.from_dicts(
        r.id, json.loads(json.dumps(r.spec.to_dict())), json.loads(json.dumps(r.to_status()))
    )


def test_a_device_joins_the_pending_wave_and_goes_out_with_it() -> None:
    r = make()
    assert r.join("e", 1.0) == 0
    assert r.waves[0].device_ids == ["a", "b", "e"] and r.waves[0].joined == ["e"]
    assert r.join("e", 2.0) == 0 and r.waves[0].device_ids.count("e") == 1  # once
    assert r.join("c", 2.0) == 1  # already in a wave: stays there


def test_a_device_joining_a_dispatched_wave_gets_its_own_health_window() -> None:
    r = make()
    r.dispatched(0, 0.0, {"a": OLD, "b": OLD})
    assert r.waves[0].deadline == 60.0
    assert r.join("e", 50.0, OLD) == 0
    w = reload(r).waves[0]
    assert w.previous["e"] == OLD and w.deadline == 110.0 and w.waiting == ["a", "b", "e"]
    for d in "ab":
        r.observe(d, "COMMITTED", "", 51.0)
    r.evaluate(70.0)  # past the wave's first deadline, not e's
    assert r.waves[0].state == "running" and "e" not in r.waves[0].outcomes
    restore = r.abort(71.0, "op", rollback=True)
    assert restore["e"] == OLD  # rolled back like the others


def test_after_the_last_wave_went_out_a_device_joins_it() -> None:
    r = make()
    r.dispatched(0, 0.0, {"a": None, "b": None})
    for d in "ab":
        r.observe(d, "COMMITTED", "", 1.0)
    r.evaluate(2.0)
    r.dispatched(1, 3.0, {"c": None, "d": None})
    assert r.join("e", 4.0) == 1
    r.abort(5.0, "op", rollback=False)
    with pytest.raises(TransitionError, match="no device joins it"):
        r.join("f", 6.0)


def test_a_skipped_device_holds_no_wave_and_is_no_failure() -> None:
    r = make()
    r.dispatched(0, 0.0, {"a": None, "b": None})
    r.observe("a", "COMMITTED", "", 1.0)
    assert r.skip("b", 2.0, "offline for 600 s")
    assert not r.skip("b", 3.0, "again") and not r.skip("a", 3.0, "has an outcome")
    assert not r.skip("c", 3.0, "its wave did not go out")
    r.evaluate(4.0)
    assert r.waves[0].state == "succeeded" and r.waves[0].failures == 0
    assert reload(r).waves[0].skipped == {"b": {"at": 2.0, "reason": "offline for 600 s"}}


def test_offline_policies_parse_and_bad_ones_are_named() -> None:
    assert OfflinePolicy.parse("wait") == OfflinePolicy() == OfflinePolicy.parse("")
    p = OfflinePolicy.parse("skip-after=30m")
    assert (p.kind, p.after_s, p.text()) == ("skip", 1800.0, "skip-after=1800s")
    assert OfflinePolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert [parse_duration(x) for x in ("90", "90s", "1.5m", "2h", "1d")] == [
        90.0,
        90.0,
        90.0,
        7200.0,
        86400.0,
    ]
    for bad, match in (
        ("skip", "expected wait or skip-after=DURATION"),
        ("drop-after=1m", "expected wait or skip-after=DURATION"),
        ("skip-after=soon", "expected a duration like 90s"),
        ("skip-after=0s", "must be more than 0"),
        ("skip-after=-5m", "expected a duration"),
    ):
        with pytest.raises(SpecError, match=match):
            OfflinePolicy.parse(bad)
    with pytest.raises(SpecError, match=r"gates\.offline"):
        OfflinePolicy.from_dict({"kind": "skip", "after_s": -1})


def device(online: bool, seen: float | None) -> DeviceRecord:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return DeviceRecord(
        id="r1",
        cert_fingerprint="00",
        labels={},
        hardware_tags=[],
        created_at=t0,
        updated_at=t0,
        last_seen=dt.datetime.fromtimestamp(seen, dt.UTC) if seen is not None else None,
        online=online,
        revoked=False,
        runtime_version="",
        active_bundle=None,
        update_state="",
        update_reason="",
        update_detail="",
        health=None,
        inventory=None,
        desired_bundle=None,
        desired_generation=0,
    )


def test_skip_after_counts_from_the_dispatch_or_the_last_sighting() -> None:
    p = OfflinePolicy.parse("skip-after=60s")
    assert skip_reason(OfflinePolicy(), device(False, None), 0.0, 999.0) is None  # wait
    assert skip_reason(p, device(True, 0.0), 0.0, 999.0) is None  # online
    assert skip_reason(p, device(False, 10.0), 0.0, 59.0) is None
    assert skip_reason(p, device(False, 100.0), 0.0, 150.0) is None  # seen after dispatch
    got = skip_reason(p, device(False, None), 0.0, 61.0)
    assert got is not None and got.startswith("offline for 61 s (skip-after=60s; last seen never)")
    assert skip_reason(p, None, 0.0, 1.0) == "removed from the fleet"


@given(st.text(max_size=40))
def test_property_any_policy_text_parses_or_is_refused_by_name(text: str) -> None:
    try:
        p = OfflinePolicy.parse(text)
    except SpecError as exc:
        assert "offline_policy" in str(exc)
    else:
        assert p.kind == "wait" or p.after_s > 0
