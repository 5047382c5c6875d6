"""Held robots on a real control plane (admin gRPC over mTLS, a real SQLite store, the
rollout driver): a robot whose update lock holds its switch past the wave's health
window does not fail the rollout — the wave waits for it, across a plane restart, and
completes once the lock is released; a lock that outlives ``--max-held`` gets the robot
skipped, not failed, and it keeps its desired state. The robots' update events are
stored as ingest stores an agent's (HELD with its reason and detail, then SWITCHING …
COMMITTED)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from cloud.store import EventRecord
from cloud.testing import RunningPlane, running_plane
from edgeflux.cli import root as cli_root
from protos import admin_pb2, admin_pb2_grpc, common_pb2
from tests.cloud.conftest import make_bundle
from tests.rollouts.attestations import attest
from tests.servers import wait_until

FACTORY = "cloud.rollouts.service:register"
NAME = "held"
LOCK = "locked by nav: mid-task (expires in 9m)"
_seq = itertools.count(1)


def event(
    plane: RunningPlane, device_id: str, state: str, reason: str = "", detail: str = ""
) -> None:
    """What ingest stores for an agent's update event on the rollout's bundle."""
    assert plane.store.record_event(
        EventRecord(
            device_id=device_id,
            sequence=next(_seq),
            at=dt.datetime.now(dt.UTC),
            kind="update",
            state=state,
            reason_code=reason,
            detail=detail,
            bundle={"name": NAME, "version": "1.0.0", "sequence": 1},
        )
    )


def cli(plane: RunningPlane, *args: str) -> Any:
    base = ["rollout", "--home", str(plane.home.root), "--server", plane.address]
    return CliRunner().invoke(cli_root, [*base, "--operator", "admin", *args])


def get(plane: RunningPlane, rollout_id: str) -> dict[str, Any]:
    res = cli(plane, "get", rollout_id, "--json")
    assert res.exit_code == 0, res.output
    return dict(json.loads(res.output))


def status(plane: RunningPlane, rollout_id: str) -> dict[str, Any]:
    rec = plane.store.get_rollout(rollout_id)
    assert rec is not None
    return dict(rec.status)


def setup(plane: RunningPlane, tmp: Path, group: str, n: int) -> list[str]:
    if plane.store.get_bundle(NAME, "1.0.0") is None:
        key = plane.home.key_path("model-signing", private=True)
        attest(plane, plane.publish(make_bundle(tmp / "b", key, name=NAME, version="1.0.0")))
    ids = [f"{group}-{i}" for i in range(n)]
    for d in ids:
        plane.device(d, labels={"group": group})
    return ids


def create(plane: RunningPlane, group: str, *extra: str) -> str:
    res = cli(
        plane,
        *("create", f"{NAME}@1.0.0", "--label", f"group={group}", "--json"),
        *("--health-window", "3", *extra),
    )
    assert res.exit_code == 0, res.output
    return str(json.loads(res.output)["id"])


def test_a_locked_robot_is_waited_for_across_a_restart_and_the_rollout_completes(
    tmp_path: Path,
) -> None:
    home = tmp_path / "plane"
    with running_plane(home, factories=[FACTORY]) as p:
        # wave 0: a commits, b is locked, c stays silent (the one failure allowed)
        a, b, c, d = setup(p, tmp_path, "lock", 4)
        rid = create(p, "lock", "--waves", "0.75,1", "--max-failure", "0.34")
        wait_until(lambda: status(p, rid)["waves"][0]["state"] == "running", 30, "wave 0 out")
        event(p, a, "COMMITTED")
        for s in ("DOWNLOADING", "STAGING", "SHADOWING"):
            event(p, b, s)
        event(p, b, "HELD", "UPDATE_LOCKED", LOCK)
        # c goes SILENT at the health window's end: by then b was held past it too
        wait_until(lambda: c in status(p, rid)["waves"][0]["outcomes"], 30, "c silent")
        w0 = status(p, rid)["waves"][0]
        assert w0["outcomes"][c]["outcome"] == "SILENT"
        assert b not in w0["outcomes"] and w0["held"][b]["reason"] == "UPDATE_LOCKED"
        got = get(p, rid)
        assert got["state"] == "running", got
        assert got["waves"][0]["held"] == [
            {"device_id": b, "outcome": "HELD", "reason_code": "UPDATE_LOCKED", "detail": LOCK}
        ]
        assert got["waves"][0]["failed"] == 1  # c only
        text = cli(p, "get", rid).output
        assert f"    {b}  HELD  UPDATE_LOCKED: {LOCK}" in text, text
        since = w0["held"][b]["since"]
        generation = p.store.get_device(b).desired_generation  # type: ignore[union-attr]

    with running_plane(home, factories=[FACTORY]) as p:  # the plane restarts; b still held
        wait_until(lambda: status(p, rid)["history"][-1]["at"] > since, 30, "a pass")
        w0 = status(p, rid)["waves"][0]
        assert w0["state"] == "running" and w0["held"][b]["since"] == since
        assert b not in w0["outcomes"] and status(p, rid)["current"] == 0
        assert p.store.get_device(b).desired_generation == generation  # type: ignore[union-attr]
        # the integrator releases the lock: the robot switches, then commits
        event(p, b, "SWITCHING")
        wait_until(lambda: b in status(p, rid)["waves"][0]["released"], 30, "b released")
        assert not status(p, rid)["waves"][0]["held"]
        event(p, b, "HEALTH_WINDOW")
        event(p, b, "COMMITTED")
        wait_until(lambda: status(p, rid)["current"] == 1, 30, "wave 1 out")
        assert status(p, rid)["waves"][0]["state"] == "succeeded"
        wait_until(lambda: status(p, rid)["waves"][1]["state"] == "running", 30, "dispatched")
        event(p, d, "COMMITTED")
        wait_until(lambda: status(p, rid)["state"] == "completed", 30, "completed")
        history = [h["reason"] for h in status(p, rid)["history"]]
        assert sum(h.startswith("wave 0 dispatched") for h in history) == 1
        assert sum(h.startswith(f"{b} held in wave 0") for h in history) == 1
        assert any(h.startswith(f"{b} released in wave 0 after") for h in history)
        assert p.store.get_device(b).desired_generation == generation  # type: ignore[union-attr]


def test_a_lock_that_outlives_max_held_skips_the_robot_not_fails_it(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", factories=[FACTORY]) as p:
        a, b = setup(p, tmp_path, "maxheld", 2)
        rid = create(p, "maxheld", "--max-held", "4s", "--abort-threshold", "0")
        wait_until(lambda: status(p, rid)["waves"][0]["state"] == "running", 30, "wave 0 out")
        event(p, a, "COMMITTED")
        event(p, b, "HELD", "OUTSIDE_WINDOW", "outside maintenance window east")
        wait_until(lambda: status(p, rid)["state"] != "running", 30, "the wave decided")
        got = get(p, rid)
        assert got["state"] == "completed", got
        assert got["max_held_s"] == 4.0
        w = got["waves"][0]
        assert w.get("failed", 0) == 0 and "held" not in w and w["committed"] == 1
        skipped = w["skipped"]
        assert [s["device_id"] for s in skipped] == [b]
        assert skipped[0]["detail"].startswith(
            "held (OUTSIDE_WINDOW: outside maintenance window east) for more than 4 s"
        )
        assert "abort" not in got  # the abort threshold (0) never saw a failure
        # it keeps its desired state: it switches when its window opens
        rec = p.store.get_device(b)
        assert rec is not None and rec.desired_bundle["version"] == "1.0.0"  # type: ignore[index]
        text = cli(p, "get", rid).output
        assert f"{b}  skipped: held (OUTSIDE_WINDOW" in text and "held devices waited" in text


def test_a_bad_max_held_is_refused_by_name(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", factories=[FACTORY]) as p:
        setup(p, tmp_path, "bad", 1)
        res = cli(p, "create", f"{NAME}@1.0.0", "--label", "group=bad", "--max-held", "soon")
        assert res.exit_code == 2 and "--max-held" in res.output and "'soon'" in res.output
        assert "Traceback" not in res.output
        with p.channel(p.operator()) as ch:  # the admin API refuses one the CLI would not send
            stub = admin_pb2_grpc.FleetAdminServiceStub(ch)
            for bad in (-5.0, float("nan"), float("inf")):
                req = admin_pb2.CreateRolloutRequest(
                    bundle=common_pb2.BundleRef(name=NAME, version="1.0.0"),
                    label_selector="group=bad",
                    max_held_s=bad,
                )
                with pytest.raises(grpc.RpcError) as err:
                    stub.CreateRollout(req, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "max_held_s" in (err.value.details() or "")
        assert p.store.list_rollouts() == []
