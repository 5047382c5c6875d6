"""Rollout gates on a real control plane (admin gRPC over mTLS, a real store): the parity
attestation checked at create and before each wave, the audited override, approvals."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from cloud.store import EventRecord, TelemetryRecord
from cloud.testing import RunningPlane, running_plane
from edgeflux.cli import root as cli_root
from protos import admin_pb2, admin_pb2_grpc, common_pb2
from tests.cloud.conftest import make_bundle
from tests.rollouts.attestations import attest
from tests.servers import wait_until

FACTORY = "cloud.rollouts.service:register"
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlane]:
    root = tmp_path_factory.mktemp("gates")
    with running_plane(root / "plane", factories=[FACTORY]) as p:
        key = p.home.key_path("model-signing", private=True)
        for i, name in enumerate(("plain", "weak", "good", "brief")):
            rec = p.publish(make_bundle(root / name, key, name=name, version="1.0.0", seed=i))
            if name == "weak":
                attest(p, rec, verdict="not_attested")
            elif name == "good":
                attest(p, rec)
        yield p


@pytest.fixture(scope="module")
def stub(plane: RunningPlane) -> Iterator[Any]:
    with plane.channel(plane.operator()) as ch:
        yield admin_pb2_grpc.FleetAdminServiceStub(ch)


def devices(plane: RunningPlane, group: str, n: int) -> list[str]:
    ids = [f"{group}-{i}" for i in range(n)]
    for d in ids:
        plane.device(d, labels={"group": group})
    return ids


def desired(plane: RunningPlane, device_id: str) -> str:
    rec = plane.store.get_device(device_id)
    assert rec is not None
    b = rec.desired_bundle
    return f"{b['name']}@{b['version']}" if b else ""


def commit(plane: RunningPlane, device_id: str, name: str) -> None:
    """What ingest stores for an agent's COMMITTED update event."""
    assert plane.store.record_event(
        EventRecord(
            device_id=device_id,
            sequence=next(_seq),
            at=dt.datetime.now(dt.UTC),
            kind="update",
            state="COMMITTED",
            bundle={"name": name, "version": "1.0.0", "sequence": 1},
        )
    )


def request(name: str, group: str, **kw: Any) -> admin_pb2.CreateRolloutRequest:
    return admin_pb2.CreateRolloutRequest(
        bundle=common_pb2.BundleRef(name=name, version="1.0.0"),
        label_selector=f"group={group}",
        health_window_s=120,
        **kw,
    )


def cli(plane: RunningPlane, *args: str, operator: str = "admin") -> Any:
    base = ["rollout", "--home", str(plane.home.root), "--server", plane.address]
    return CliRunner().invoke(cli_root, [*base, "--operator", operator, *args])


def get(stub: Any, rollout_id: str) -> admin_pb2.Rollout:
    return stub.GetRollout(admin_pb2.RolloutId(id=rollout_id), timeout=10)


def test_a_bundle_without_a_valid_attestation_is_refused_at_create(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "refused", 2)
    before = len(plane.store.audit_log(limit=1000))
    for name, reason in (("plain", "missing"), ("weak", "verdict")):
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateRollout(request(name, "refused", wave_fractions=[0.5, 1]), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details() or ""
        assert details.startswith(f"parity attestation gate: {reason}: {name} 1.0.0"), details
        if reason == "missing":
            assert "--allow-unattested" in details
    assert [r.bundle_name for r in plane.store.list_rollouts()].count("plain") == 0
    assert [desired(plane, d) for d in ids] == ["", ""]
    assert len(plane.store.audit_log(limit=1000)) == before  # nothing recorded
    res = cli(plane, "create", "plain@1.0.0", "--label", "group=refused")
    assert res.exit_code == 1 and "FAILED_PRECONDITION: parity attestation gate" in res.output
    assert "Traceback" not in res.output


def test_the_override_is_explicit_and_audited_with_the_operator(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "override", 1)
    r = stub.CreateRollout(request("plain", "override", allow_unattested=True), timeout=10)
    assert r.allow_unattested and r.unattested_override_by == "operator:admin"
    assert "no parity attestation for policy.onnx" in r.attestation
    wait_until(lambda: desired(plane, ids[0]) == "plain@1.0.0", 30, "the wave went out")
    audit = [a for a in plane.store.audit_log(limit=1000) if a.target == r.id]
    assert [(a.actor, a.action) for a in audit] == [
        ("operator:admin", "rollout.unattested_override")
    ]
    assert audit[0].detail["reason"] == "missing"  # type: ignore[index]

    def overridden() -> bool:  # the hint goes out before the driver's pass saves
        history = [h["reason"] for h in plane.store.get_rollout(r.id).status["history"]]  # type: ignore[union-attr]
        return any("override by operator:admin" in h and h.startswith("wave 0:") for h in history)

    wait_until(overridden, 30, "wave 0's history to name the override")
    res = cli(plane, "get", r.id)
    assert "--allow-unattested: override by operator:admin" in res.output, res.output


def test_an_attestation_expiring_mid_rollout_holds_the_next_wave(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "brief", 2)
    rec = plane.store.get_bundle("brief", "1.0.0")
    assert rec is not None
    attest(plane, rec, expires_in_s=3)
    expires = time.time() + 3
    r = stub.CreateRollout(request("brief", "brief", wave_fractions=[0.5, 1]), timeout=10)
    assert "attested by key" in r.attestation and "valid until" in r.attestation
    wait_until(lambda: desired(plane, ids[0]) == "brief@1.0.0", 30, "wave 0 went out")
    wait_until(lambda: time.time() > expires + 0.5, 10, "the attestation to expire")
    commit(plane, ids[0], "brief")
    wait_until(lambda: get(stub, r.id).state == "paused", 30, "the rollout to pause")
    got = get(stub, r.id)
    assert got.reason.startswith("wave 1 held: parity attestation gate: expired: "), got.reason
    assert got.waves[0].state == "succeeded" and got.waves[1].state == "pending"
    assert desired(plane, ids[1]) == ""
    attest(plane, rec)  # a new campaign: a fresh attestation
    stub.ResumeRollout(admin_pb2.RolloutId(id=r.id), timeout=10)
    wait_until(lambda: desired(plane, ids[1]) == "brief@1.0.0", 30, "wave 1 after re-attesting")


def test_a_wave_waits_for_approval_which_is_recorded_once(plane: RunningPlane, stub: Any) -> None:
    ids = devices(plane, "approve", 2)
    res = cli(
        plane,
        "create",
        "good@1.0.0",
        "--label",
        "group=approve",
        "--waves",
        "0.5,1",
        "--approval-wave",
        "1",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    wait_until(lambda: desired(plane, ids[0]) == "good@1.0.0", 30, "wave 0 went out")
    commit(plane, ids[0], "good")

    def waiting() -> bool:
        rec = plane.store.get_rollout(rid)
        return rec is not None and rec.status["gates"].get("waiting") == 1

    wait_until(waiting, 30, "wave 1 to wait for its approval")
    got = get(stub, rid)
    assert got.state == "running" and got.waves[1].state == "pending"
    assert got.waves[1].approval_required and not got.waves[1].approved_by
    assert desired(plane, ids[1]) == ""
    res = cli(plane, "get", rid)
    assert f"waits for approval: edgeflux rollout approve {rid} --wave 1" in res.output
    # a viewer cannot approve
    plane.operator("watcher", "viewer")
    res = cli(plane, "approve", rid, operator="watcher")
    assert res.exit_code == 1 and "PERMISSION_DENIED" in res.output
    res = cli(plane, "approve", rid, "--wave", "1")
    assert res.exit_code == 0, res.output
    assert "approved by operator:admin" in res.output
    wait_until(lambda: desired(plane, ids[1]) == "good@1.0.0", 30, "wave 1 after approval")
    res = cli(plane, "approve", rid, "--wave", "1")
    assert res.exit_code == 1 and "already approved by operator:admin" in res.output
    res = cli(plane, "approve", rid, "--wave", "0")
    assert res.exit_code == 1 and "does not wait for approval" in res.output
    approvals = [a for a in plane.store.audit_log(limit=1000) if a.action == "rollout.approve"]
    assert [(a.actor, a.target, a.detail) for a in approvals] == [
        ("operator:admin", rid, {"wave": 1})
    ]
    got = get(stub, rid)
    assert got.waves[1].approved_by == "operator:admin" and got.waves[1].approved_at.seconds > 0


def test_an_approval_wave_the_plan_lacks_is_refused(plane: RunningPlane, stub: Any) -> None:
    devices(plane, "nowave", 2)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateRollout(
            request("good", "nowave", wave_fractions=[0.5, 1], approval_waves=[2]), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "approval_waves: wave 2 does not exist; this rollout has 2 wave(s)" in (
        err.value.details() or ""
    )


def test_an_approval_survives_a_plane_restart_and_applies_once(tmp_path: Path) -> None:
    home = tmp_path / "plane"
    with running_plane(home, factories=[FACTORY]) as p:
        key = p.home.key_path("model-signing", private=True)
        attest(p, p.publish(make_bundle(tmp_path / "b", key, name="good", version="1.0.0")))
        ids = devices(p, "restart", 1)
        with p.channel(p.operator()) as ch:
            stub = admin_pb2_grpc.FleetAdminServiceStub(ch)
            rid = stub.CreateRollout(request("good", "restart", approval_waves=[0]), timeout=10).id
    with running_plane(home, factories=[FACTORY]) as p:
        assert desired(p, ids[0]) == ""
        res = cli(p, "approve", rid)
        assert res.exit_code == 0, res.output
        wait_until(lambda: desired(p, ids[0]) == "good@1.0.0", 30, "wave 0 after approval")
        wait_until(
            lambda: p.store.get_rollout(rid).status["waves"][0]["state"] == "running",  # type: ignore[union-attr]
            30,
            "the dispatch saved",
        )
    with running_plane(home, factories=[FACTORY]) as p:
        commit(p, ids[0], "good")
        wait_until(lambda: p.store.get_rollout(rid).state == "completed", 30, "completed")  # type: ignore[union-attr]
        history = [h["reason"] for h in p.store.get_rollout(rid).status["history"]]  # type: ignore[union-attr]
        assert sum(h.startswith("wave 0 dispatched") for h in history) == 1
        assert history.count("wave 0 approved by operator:admin") == 1


def fail(plane: RunningPlane, device_id: str, name: str, reason: str) -> None:
    assert plane.store.record_event(
        EventRecord(
            device_id=device_id,
            sequence=next(_seq),
            at=dt.datetime.now(dt.UTC),
            kind="update",
            state="FAILED",
            reason_code=reason,
            detail="the robot said why",
            bundle={"name": name, "version": "1.0.0", "sequence": 1},
        )
    )


def generation(plane: RunningPlane, device_id: str) -> int:
    rec = plane.store.get_device(device_id)
    assert rec is not None
    return int(rec.desired_generation)


def test_a_transient_failure_is_retried_with_backoff_apart_from_the_threshold(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "retry", 1)
    res = cli(
        plane,
        "create",
        "good@1.0.0",
        "--label",
        "group=retry",
        "--max-failure",
        "0",
        "--max-tries",
        "2",
        "--retry-backoff",
        "5",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    assert json.loads(res.stdout)["max_tries"] == 2
    wait_until(lambda: desired(plane, ids[0]) == "good@1.0.0", 30, "the wave went out")
    first = generation(plane, ids[0])
    failed_at = time.time()
    fail(plane, ids[0], "good", "DOWNLOAD_FAILED")
    wait_until(lambda: bool(get(stub, rid).waves[0].retries), 30, "a retry to be scheduled")
    got = get(stub, rid)
    assert got.state == "running" and got.waves[0].failed == 0
    t = got.waves[0].retries[0]
    assert (t.device_id, t.tries, t.reason_code) == (ids[0], 1, "DOWNLOAD_FAILED")
    assert 2.5 - 0.5 <= t.next_at.ToDatetime().timestamp() - failed_at <= 5.0 + 1.0
    out = cli(plane, "get", rid).output
    assert f"{ids[0]}  retried, 1 try (last: FAILED DOWNLOAD_FAILED); try 2 at" in out, out
    wait_until(lambda: generation(plane, ids[0]) == first + 1, 30, "the device pointed again")
    assert time.time() - failed_at >= 2.5  # not before the backoff
    commit(plane, ids[0], "good")
    wait_until(lambda: get(stub, rid).state == "completed", 30, "the rollout to complete")
    got = get(stub, rid)
    assert got.waves[0].committed == 1 and got.waves[0].retries[0].tries == 2


def test_a_failure_of_the_bundle_itself_counts_at_once(plane: RunningPlane, stub: Any) -> None:
    ids = devices(plane, "noretry", 1)
    r = stub.CreateRollout(request("good", "noretry", max_tries=5, retry_base_s=5), timeout=10)
    wait_until(lambda: desired(plane, ids[0]) == "good@1.0.0", 30, "the wave went out")
    fail(plane, ids[0], "good", "SHADOW_DIVERGENCE")
    wait_until(lambda: get(stub, r.id).state == "paused", 30, "the rollout to pause")
    assert not get(stub, r.id).waves[0].retries


def test_bad_retry_settings_are_refused(plane: RunningPlane, stub: Any) -> None:
    devices(plane, "badretry", 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateRollout(request("good", "badretry", max_tries=2, retry_base_s=1), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "retry_base_s = 1.0: must be at least 5 s" in (err.value.details() or "")


def telemetry(plane: RunningPlane, device_id: str, start: float, end: float, rate: float) -> None:
    """Counters as ingest stores them: 50 Hz ticks, `rate` of them missed, in [start, end]."""
    points = []
    for i in range(6):
        at = start + (end - start) * i / 5
        ticks = 50 * i * 10
        points.append(
            TelemetryRecord(
                at=dt.datetime.fromtimestamp(at, dt.UTC),
                deadline_miss_rate=rate,
                extra={"ticks": ticks, "deadline_misses": round(ticks * rate)},
            )
        )
    assert plane.store.record_telemetry(device_id, next(_seq), points)


def soak_window(plane: RunningPlane, rid: str) -> tuple[float, float]:
    def started() -> bool:
        rec = plane.store.get_rollout(rid)
        return rec is not None and "0" in (rec.status["gates"].get("soak") or {})

    wait_until(started, 30, "wave 0's soak to start")
    st = plane.store.get_rollout(rid).status["gates"]["soak"]["0"]  # type: ignore[union-attr]
    return float(st["started"]), float(st["until"])


def test_a_wave_that_raises_the_miss_rate_pauses_after_its_soak(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "soakbad", 4)
    res = cli(
        plane,
        "create",
        "good@1.0.0",
        "--label",
        "group=soakbad",
        "--waves",
        "0.5,1",
        "--soak",
        "2",
        "--max-miss-rate-increase",
        "0.02",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    wait_until(lambda: desired(plane, ids[1]) == "good@1.0.0", 30, "wave 0 went out")
    for d in ids[:2]:
        commit(plane, d, "good")
    start, end = soak_window(plane, rid)
    assert desired(plane, ids[2]) == "" and "soaking until" in get(stub, rid).waves[0].soak
    for d in ids[:2]:
        telemetry(plane, d, start, end, 0.2)  # on the new bundle
    for d in ids[2:]:
        telemetry(plane, d, start, end, 0.0)  # not updated yet
    wait_until(lambda: get(stub, rid).state == "paused", 30, "the soak to pause the rollout")
    got = get(stub, rid)
    assert got.reason.startswith("wave 0 soak regressed: deadline-miss rate up +0.2000 > 0.02")
    assert got.waves[0].soak.startswith("soak regressed: ")
    assert [desired(plane, d) for d in ids[2:]] == ["", ""]
    out = cli(plane, "get", rid).output
    assert "soak regressed: deadline-miss rate up" in out and "soak 2 s after each wave" in out
    stub.ResumeRollout(admin_pb2.RolloutId(id=rid), timeout=10)  # the operator accepts it
    wait_until(lambda: desired(plane, ids[3]) == "good@1.0.0", 30, "wave 1 after the resume")
    assert get(stub, rid).waves[0].soak.startswith("soak accepted: ")


def test_a_soak_survives_a_plane_restart_and_is_decided_once(tmp_path: Path) -> None:
    home = tmp_path / "plane"
    with running_plane(home, factories=[FACTORY]) as p:
        key = p.home.key_path("model-signing", private=True)
        attest(p, p.publish(make_bundle(tmp_path / "b", key, name="good", version="1.0.0")))
        ids = devices(p, "soakre", 2)
        with p.channel(p.operator()) as ch:
            stub = admin_pb2_grpc.FleetAdminServiceStub(ch)
            rid = stub.CreateRollout(
                request("good", "soakre", wave_fractions=[0.5, 1], soak_s=3), timeout=10
            ).id
        wait_until(lambda: desired(p, ids[0]) == "good@1.0.0", 30, "wave 0 went out")
        commit(p, ids[0], "good")
        start, end = soak_window(p, rid)
    # the plane is down during the soak; the robots' telemetry is ingested meanwhile
    with running_plane(home, factories=[FACTORY]) as p:
        telemetry(p, ids[0], start, end, 0.01)
        telemetry(p, ids[1], start, end, 0.01)
        assert desired(p, ids[1]) == "" or time.time() >= end
        wait_until(lambda: desired(p, ids[1]) == "good@1.0.0", 30, "wave 1 after the soak")
        assert time.time() >= end  # not before the window closed
        history = [h["reason"] for h in p.store.get_rollout(rid).status["history"]]  # type: ignore[union-attr]
        assert sum(h.startswith("wave 0 soak passed: ") for h in history) == 1
        assert sum(h.startswith("wave 0 soaks for 3 s") for h in history) == 1


def test_a_wave_regressed_past_the_abort_threshold_is_aborted_and_rolled_back(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "soakabort", 4)
    old = plane.store.get_bundle("plain", "1.0.0")
    assert old is not None
    previous = {
        "name": "plain",
        "version": "1.0.0",
        "sequence": 1,
        "target": old.target_path,
        "sha256": old.efb_sha256,
        "length": old.size_bytes,
    }
    plane.store.set_desired(ids, previous)
    res = cli(
        plane,
        "create",
        "good@1.0.0",
        "--label",
        "group=soakabort",
        "--waves",
        "0.5,1",
        "--soak",
        "2",
        "--max-miss-rate-increase",
        "0.02",
        "--abort-threshold",
        "0.5",
        "--abort-min-robots",
        "2",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    assert json.loads(res.stdout)["abort_threshold"] == 0.5
    wait_until(lambda: desired(plane, ids[1]) == "good@1.0.0", 30, "wave 0 went out")
    gens = [plane.store.get_device(d).desired_generation for d in ids[:2]]  # type: ignore[union-attr]
    for d in ids[:2]:
        commit(plane, d, "good")
    start, end = soak_window(plane, rid)
    for d in ids[:2]:
        telemetry(plane, d, start, end, 0.2)  # both robots of wave 0 regress
    for d in ids[2:]:
        telemetry(plane, d, start, end, 0.0)
    wait_until(lambda: get(stub, rid).state == "aborted", 30, "the abort threshold to abort")
    got = get(stub, rid)
    assert got.abort.startswith("2/2 dispatched robot(s) failed or regressed (0 failed, 2 ")
    assert got.abort.endswith("= 1.00 > abort threshold 0.5")
    assert "aborted by the abort threshold (2/2 dispatched" in got.reason
    assert got.waves[1].state == "cancelled"
    assert [desired(plane, d) for d in ids] == ["plain@1.0.0"] * 4  # rolled back, held
    after = [plane.store.get_device(d).desired_generation for d in ids[:2]]  # type: ignore[union-attr]
    assert after == [g + 1 for g in gens]  # one rollback each
    rec = plane.store.get_rollout(rid)
    assert rec is not None
    history = [h["reason"] for h in rec.status["history"]]
    assert any(h.startswith("wave 0 soak regressed: ") for h in history)
    assert any("rolled back 2 device(s)" in h for h in history)
    assert "intent" not in rec.status["gates"]
    audit = [a for a in plane.store.audit_log(limit=1000) if a.target == rid]
    assert [(a.actor, a.action) for a in audit] == [("rollout-engine", "rollout.abort_threshold")]
    assert audit[0].detail["regressed"] == ids[:2]  # type: ignore[index]
    out = cli(plane, "get", rid).output
    assert "abort threshold crossed: 2/2 dispatched robot(s)" in out
    assert "aborted with rollback past 0.5 of the dispatched robots" in out


def test_a_wave_waits_for_the_external_check_which_is_audited_with_its_answer(
    plane: RunningPlane, stub: Any
) -> None:
    from tests.rollouts.approval_server import approval_server

    ids = devices(plane, "external", 2)
    with approval_server("deny") as srv:
        srv.reason = "change freeze"
        res = cli(
            plane,
            "create",
            "good@1.0.0",
            "--label",
            "group=external",
            "--waves",
            "0.5,1",
            "--approval-url",
            srv.url,
            "--approval-timeout",
            "1",
            "--json",
        )
        assert res.exit_code == 0, res.output
        rid = json.loads(res.stdout)["id"]
        wait_until(lambda: len(srv.posts) >= 1, 30, "the plane to ask the approval URL")
        wait_until(
            lambda: "change freeze" in get(stub, rid).waves[0].approval_check,
            30,
            "the deny to show",
        )
        assert [desired(plane, d) for d in ids] == ["", ""]
        post = srv.posts[0]
        assert (post["rollout"], post["wave"], post["devices"]) == (rid, 0, 1)
        assert post["bundle"]["name"] == "good" and len(post["bundle"]["sha256"]) == 64
        out = cli(plane, "get", rid).output
        assert f"each wave waits for the approval check at {srv.url}" in out
        assert "denied by the approval check: change freeze; " in out
        srv.mode = "hang"  # past the 1 s time-out: still waiting, with the reason
        wait_until(
            lambda: "no answer within 1 s" in get(stub, rid).waves[0].approval_check,
            30,
            "the time-out to show",
        )
        assert [desired(plane, d) for d in ids] == ["", ""]
        srv.mode, srv.reason = "allow", "CAB-123 approved"
        srv.release.set()
        wait_until(lambda: desired(plane, ids[0]) == "good@1.0.0", 60, "wave 0 to go out")
        commit(plane, ids[0], "good")
        wait_until(lambda: desired(plane, ids[1]) == "good@1.0.0", 60, "wave 1 to go out")
    got = get(stub, rid)
    assert got.waves[0].approval_check == "allowed by the approval check: CAB-123 approved"
    audit = [
        a
        for a in plane.store.audit_log(limit=1000)
        if a.target == rid and a.action == "rollout.external_approval"
    ]
    assert [a.detail["wave"] for a in audit] == [1, 0]  # type: ignore[index]
    assert all(a.actor == "rollout-engine" and a.detail["url"] == srv.url for a in audit)  # type: ignore[index]
    assert audit[1].detail["answer"]["reason"] == "CAB-123 approved"  # type: ignore[index]
    assert audit[1].detail["answer"]["decision"] == "allow"  # type: ignore[index]


def test_a_bad_approval_url_is_refused_at_create(plane: RunningPlane, stub: Any) -> None:
    devices(plane, "badurl", 1)
    for url, why in (
        ("file:///etc/passwd", "expected an http:// or https:// URL"),
        ("http://u:p@example.com/", "credentials in the URL are refused"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateRollout(request("good", "badurl", approval_url=url), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in (err.value.details() or "")


def test_a_robot_joining_the_label_mid_rollout_gets_the_target_and_offline_ones_are_skipped(
    plane: RunningPlane, stub: Any
) -> None:
    ids = devices(plane, "dyn", 2)
    for d in ids:
        plane.store.set_online(d, True)
    res = cli(
        plane,
        "create",
        "good@1.0.0",
        "--label",
        "group=dyn",
        "--waves",
        "0.5,1",
        "--offline-policy",
        "skip-after=2s",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    assert json.loads(res.stdout)["offline_policy"] == "skip-after=2s"
    wait_until(lambda: desired(plane, ids[0]) == "good@1.0.0", 30, "wave 0 went out")
    plane.device("dyn-2", labels={"group": "dyn"})  # joins while wave 0 runs
    plane.store.set_online("dyn-2", True)
    wait_until(lambda: desired(plane, "dyn-2") == "good@1.0.0", 30, "the newcomer's target")
    assert list(get(stub, rid).waves[0].joined) == ["dyn-2"]
    assert desired(plane, ids[1]) == ""  # wave 1 still waits
    commit(plane, ids[0], "good")
    plane.store.set_online("dyn-2", False)  # never reports: skipped after 2 s
    wait_until(lambda: desired(plane, ids[1]) == "good@1.0.0", 60, "wave 1 to go out")
    commit(plane, ids[1], "good")
    wait_until(lambda: get(stub, rid).state == "completed", 30, "the rollout to complete")
    got = get(stub, rid)
    assert [o.device_id for o in got.waves[0].skipped] == ["dyn-2"]
    assert got.waves[0].skipped[0].detail.startswith("offline for ")
    assert got.waves[0].failed == 0
    out = cli(plane, "get", rid).output
    assert "offline devices: skip-after=2s" in out and "joined while running: dyn-2" in out
    assert "dyn-2  skipped: offline for " in out
    res = cli(
        plane, "create", "good@1.0.0", "--label", "group=dyn", "--offline-policy", "skip-after=soon"
    )
    assert res.exit_code == 1 and "INVALID_ARGUMENT: offline_policy: skip-after=soon" in res.output


def test_the_soak_compares_a_wave_with_its_own_robots_before_and_shows_the_figures(
    plane: RunningPlane, stub: Any
) -> None:
    from fleet.update_core import ShadowResult, ShadowThresholds, shadow_summary

    ids = devices(plane, "soaklat", 4)

    def points(device_id: str, t0: float, t1: float, p99: float) -> None:
        pts = [
            TelemetryRecord(
                at=dt.datetime.fromtimestamp(t0 + (t1 - t0) * i / 5, dt.UTC),
                loop_p99_ms=p99,
                extra={"ticks": 500 * i, "deadline_misses": 0},
            )
            for i in range(6)
        ]
        assert plane.store.record_telemetry(device_id, next(_seq), pts)

    res = cli(
        plane,
        "create",
        "good@1.0.0",
        "--label",
        "group=soaklat",
        "--waves",
        "0.5,1",
        "--soak",
        "4",
        "--max-divergence",
        "0.5",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    wait_until(lambda: desired(plane, ids[1]) == "good@1.0.0", 30, "wave 0 went out")

    def sent() -> float | None:
        rec = plane.store.get_rollout(rid)
        return rec.status["waves"][0]["dispatched_at"] if rec is not None else None

    wait_until(lambda: sent() is not None, 30, "wave 0's dispatch to be saved")
    dispatched = float(sent())  # type: ignore[arg-type]
    for d in ids[:2]:  # on the previous bundle, in the soak's length before: 1 ms
        points(d, dispatched - 3.5, dispatched - 0.1, 1.0)
    summary = shadow_summary(
        ShadowResult(
            ticks=200, divergence_max=0.125, nan_rate=0.0, latency_p99_ms=0.5, envelope_violations=0
        ),
        ShadowThresholds(),
    )
    for d in ids[:2]:
        assert plane.store.record_event(
            EventRecord(
                device_id=d,
                sequence=next(_seq),
                at=dt.datetime.now(dt.UTC),
                kind="update",
                state="SWITCHING",
                reason_code="OK",
                detail=summary,
                bundle={"name": "good", "version": "1.0.0", "sequence": 1},
            )
        )
        commit(plane, d, "good")
    start, end = soak_window(plane, rid)
    for d in ids:  # 3 ms on the new bundle, and on the robots not updated yet
        points(d, start, end, 3.0)
    wait_until(lambda: get(stub, rid).state == "paused", 30, "the soak to pause the rollout")
    got = get(stub, rid)
    assert got.reason.startswith(
        "wave 0 soak regressed: loop latency p99 3.00 ms is 3.00x the same robots before's "
        "1.00 ms > 1.5x"
    ), got.reason
    w = got.waves[0]
    assert w.soak_verdict == "regressed"
    figs = {f.group: f for f in w.soak_figures}
    assert set(figs) == {"wave", "before", "not yet updated"}
    assert figs["wave"].latency_p99_ms == 3.0 and figs["before"].latency_p99_ms == 1.0
    assert figs["wave"].divergence == pytest.approx(0.125)
    assert not figs["not yet updated"].HasField("divergence")
    assert (figs["wave"].reporting, figs["before"].reporting) == (2, 2)
    out = cli(plane, "get", rid).output
    assert "      wave: 2/2 reporting, miss rate 0.0000" in out
    assert "loop p99 3.00 ms" in out and "shadow divergence 0.125" in out
    assert "      before: 2/2 reporting" in out and "shadow divergence <= 0.5" in out
