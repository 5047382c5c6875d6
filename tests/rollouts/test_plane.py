"""The rollout engine on a real control plane: admin gRPC over mTLS, a real store,
the embedded MQTT broker; device outcomes recorded the way ingest records them."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cloud.store import EventRecord
from cloud.testing import RunningPlane, running_plane
from protos import admin_pb2, admin_pb2_grpc, common_pb2
from tests.cloud.conftest import make_bundle
from tests.rollouts.attestations import attest
from tests.servers import wait_until

FACTORY = "cloud.rollouts.service:register"
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlane]:
    root = tmp_path_factory.mktemp("rollouts")
    with running_plane(root / "plane", broker=True, factories=[FACTORY]) as p:
        key = p.home.key_path("model-signing", private=True)
        for version, seq in (("1.0.0", 1), ("1.1.0", 2)):
            attest(
                p, p.publish(make_bundle(root / f"b-{version}", key, version=version, sequence=seq))
            )
        yield p


def admin(plane: RunningPlane, name: str = "admin", role: str = "admin") -> Any:
    ch = plane.channel(plane.operator(name, role))
    return ch, admin_pb2_grpc.FleetAdminServiceStub(ch)


def devices(plane: RunningPlane, group: str, n: int) -> list[str]:
    ids = [f"{group}-{i}" for i in range(n)]
    for d in ids:
        plane.device(d, labels={"group": group})
    old = plane.store.get_bundle("pendulum", "1.0.0")
    assert old is not None
    plane.store.set_desired(
        ids,
        {
            "name": "pendulum",
            "version": "1.0.0",
            "sequence": 1,
            "target": old.target_path,
            "sha256": old.efb_sha256,
            "length": old.size_bytes,
        },
    )
    return ids


def desired_version(plane: RunningPlane, device_id: str) -> str:
    rec = plane.store.get_device(device_id)
    assert rec is not None
    return str(rec.desired_bundle["version"]) if rec.desired_bundle else ""


def report(plane: RunningPlane, device_id: str, state: str, reason: str = "") -> None:
    """What ingest stores for an agent's update event (cloud.ingest.decode -> record_event)."""
    assert plane.store.record_event(
        EventRecord(
            device_id=device_id,
            sequence=next(_seq),
            at=dt.datetime.now(dt.UTC),
            kind="update",
            state=state,
            reason_code=reason,
            bundle={"name": "pendulum", "version": "1.1.0", "sequence": 2, "policy_sha256": ""},
        )
    )


def get(stub: Any, rollout_id: str) -> admin_pb2.Rollout:
    return stub.GetRollout(admin_pb2.RolloutId(id=rollout_id), timeout=10)


def create(stub: Any, group: str, waves: list[float], max_failure: float = 0.0) -> str:
    r = stub.CreateRollout(
        admin_pb2.CreateRolloutRequest(
            bundle=common_pb2.BundleRef(name="pendulum", version="1.1.0"),
            label_selector=f"group={group}",
            wave_fractions=waves,
            max_failure_fraction=max_failure,
            health_window_s=120,
        ),
        timeout=10,
    )
    assert r.id and r.created_by == "operator:admin"
    return str(r.id)


def test_wave_two_gets_the_bundle_only_after_wave_one_committed(plane: RunningPlane) -> None:
    from cloud.mqtt import CloudMqtt, CloudMqttSettings

    ids = devices(plane, "waves", 4)
    hints: list[str] = []
    watcher = CloudMqtt(
        CloudMqttSettings(port=plane.broker_port, client_id="test-hint-watcher"),
        on_message=lambda m: hints.append(m.topic),
        clean_session=True,
    )
    watcher.subscribe("edgeflux/v1/devices/+/updates")
    watcher.start(timeout_s=10)
    ch, stub = admin(plane)
    try:
        rid = create(stub, "waves", [0.25, 1.0])
        wait_until(lambda: desired_version(plane, ids[0]) == "1.1.0", 30, "wave 0 dispatched")
        wait_until(lambda: any(ids[0] in t for t in hints), 30, "the wave 0 hint")
        # the hint goes out during the driver's pass, which saves the rollout after it
        wait_until(lambda: get(stub, rid).state == "running", 30, "the rollout saved running")
        r = get(stub, rid)
        assert r.state == "running" and [list(w.device_ids) for w in r.waves] == [
            ids[:1],
            ids[1:],
        ]
        # wave 1 waits for wave 0's outcome: still on the old bundle, no hint
        assert [desired_version(plane, d) for d in ids[1:]] == ["1.0.0"] * 3
        report(plane, ids[0], "SHADOW")  # not terminal: nothing moves
        assert [desired_version(plane, d) for d in ids[1:]] == ["1.0.0"] * 3
        assert not [t for t in hints if any(d in t for d in ids[1:])]
        report(plane, ids[0], "COMMITTED")
        wait_until(
            lambda: all(desired_version(plane, d) == "1.1.0" for d in ids[1:]),
            30,
            "wave 1 dispatched after wave 0 committed",
        )
        wait_until(lambda: all(any(d in t for t in hints) for d in ids), 30, "wave 1 hints")
        wait_until(lambda: get(stub, rid).waves[0].committed == 1, 30, "wave 0 saved committed")
        for d in ids[1:]:
            report(plane, d, "COMMITTED")
        wait_until(lambda: get(stub, rid).state == "completed", 30, "completed")
        r = get(stub, rid)
        assert [w.state for w in r.waves] == ["succeeded", "succeeded"]
        assert "all 2 wave(s) done" in r.reason
        listed = stub.ListRollouts(admin_pb2.ListRolloutsRequest(), timeout=10)
        assert rid in [x.id for x in listed.rollouts]
    finally:
        ch.close()
        watcher.stop()


def test_a_failing_wave_pauses_and_resume_overrides_it(plane: RunningPlane) -> None:
    ids = devices(plane, "fail", 4)
    ch, stub = admin(plane)
    try:
        rid = create(stub, "fail", [0.5, 1.0], max_failure=0.0)
        wait_until(lambda: desired_version(plane, ids[1]) == "1.1.0", 30, "wave 0 dispatched")
        report(plane, ids[0], "ROLLED_BACK", "health_window")
        wait_until(lambda: get(stub, rid).state == "paused", 30, "paused on the threshold")
        r = get(stub, rid)
        assert "wave 0: 1/2 devices failed (rolled_back 1)" in r.reason
        assert r.waves[0].rolled_back == 1 and r.waves[0].state == "failed"
        report(plane, ids[1], "COMMITTED")  # outcomes still count while paused
        wait_until(lambda: get(stub, rid).waves[0].committed == 1, 30, "outcome while paused")
        assert [desired_version(plane, d) for d in ids[2:]] == ["1.0.0"] * 2
        # a second pause is refused: it is not running
        with pytest.raises(grpc.RpcError) as err:
            stub.PauseRollout(admin_pb2.RolloutId(id=rid), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        r = stub.ResumeRollout(admin_pb2.RolloutId(id=rid), timeout=10)
        assert r.state == "running" and r.waves[0].state == "overridden"
        wait_until(
            lambda: all(desired_version(plane, d) == "1.1.0" for d in ids[2:]),
            30,
            "wave 1 dispatched after resume",
        )
    finally:
        ch.close()


def test_pause_holds_the_next_wave_and_abort_rolls_back(plane: RunningPlane) -> None:
    ids = devices(plane, "abort", 4)
    ch, stub = admin(plane)
    try:
        rid = create(stub, "abort", [0.5, 1.0])
        wait_until(lambda: desired_version(plane, ids[1]) == "1.1.0", 30, "wave 0 dispatched")
        r = stub.PauseRollout(admin_pb2.RolloutId(id=rid), timeout=10)
        assert r.state == "paused" and "paused by operator:admin" in r.reason
        report(plane, ids[0], "COMMITTED")
        report(plane, ids[1], "COMMITTED")
        wait_until(lambda: get(stub, rid).waves[0].committed == 2, 30, "wave 0 outcomes")
        assert [desired_version(plane, d) for d in ids[2:]] == ["1.0.0"] * 2  # held
        gen = plane.store.get_device(ids[0]).desired_generation  # type: ignore[union-attr]
        r = stub.AbortRollout(admin_pb2.RolloutId(id=rid, rollback=True), timeout=10)
        assert r.state == "aborted" and r.waves[1].state == "cancelled"
        assert [desired_version(plane, d) for d in ids] == ["1.0.0"] * 4
        assert plane.store.get_device(ids[0]).desired_generation == gen + 1  # type: ignore[union-attr]
        rec = plane.store.get_rollout(rid)
        assert rec is not None and rec.state == "aborted"
        assert any("rolled back 2 device(s)" in h["reason"] for h in rec.status["history"])
        with pytest.raises(grpc.RpcError) as err:
            stub.ResumeRollout(admin_pb2.RolloutId(id=rid), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        ch.close()


def test_a_viewer_reads_but_cannot_change_rollouts(plane: RunningPlane) -> None:
    devices(plane, "perm", 1)
    ch, stub = admin(plane)
    vch, viewer = admin(plane, "vic", "viewer")
    try:
        rid = create(stub, "perm", [1.0])
        assert get(viewer, rid).id == rid
        for call, req in (
            (viewer.CreateRollout, admin_pb2.CreateRolloutRequest(label_selector="group=perm")),
            (viewer.PauseRollout, admin_pb2.RolloutId(id=rid)),
            (viewer.AbortRollout, admin_pb2.RolloutId(id=rid)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        ch.close()
        vch.close()


@pytest.mark.parametrize(
    ("request_kwargs", "code", "needle"),
    [
        ({"bundle": {"name": "nope", "version": "9"}}, "NOT_FOUND", "not published"),
        ({"label_selector": "group=nobody"}, "INVALID_ARGUMENT", "no devices match"),
        ({"device_ids": ["ghost"]}, "INVALID_ARGUMENT", "no device 'ghost'"),
        ({"wave_fractions": [0.5]}, "INVALID_ARGUMENT", "end at 1.0"),
        ({"max_failure_fraction": 2.0}, "INVALID_ARGUMENT", "max_failure_fraction"),
        (
            {"bundle": {"name": "pendulum", "version": "1.1.0", "sequence": 7}},
            "INVALID_ARGUMENT",
            "sequence 2",
        ),
        (
            {"bundle": {"name": "pendulum", "version": "1.0.0"}},
            "FAILED_PRECONDITION",
            "below the published pendulum 1.1.0 (sequence 2)",
        ),
        ({"max_action_divergence": -0.5}, "INVALID_ARGUMENT", "max_action_divergence"),
        ({"device_ids": ["newer-0"]}, "FAILED_PRECONDITION", "sequence 10 or more"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(
    plane: RunningPlane, request_kwargs: dict[str, Any], code: str, needle: str
) -> None:
    if not plane.store.get_device("bad-0"):
        devices(plane, "bad", 1)
        devices(plane, "newer", 1)
        plane.store.record_inventory("newer-0", {"anti_rollback": {"pendulum": 9}})
    fields: dict[str, Any] = {
        "bundle": {"name": "pendulum", "version": "1.1.0"},
        "label_selector": "group=bad",
    }
    fields.update(request_kwargs)
    if "device_ids" in request_kwargs:
        fields["label_selector"] = ""
    req = admin_pb2.CreateRolloutRequest(
        bundle=common_pb2.BundleRef(**fields.pop("bundle")), **fields
    )
    ch, stub = admin(plane)
    try:
        before = len(plane.store.list_rollouts(limit=1000))
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateRollout(req, timeout=10)
        assert err.value.code().name == code and needle in (err.value.details() or "")
        assert len(plane.store.list_rollouts(limit=1000)) == before
        with pytest.raises(grpc.RpcError) as err:
            stub.GetRollout(admin_pb2.RolloutId(id="ro-missing"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        ch.close()


def test_create_plans_each_device_and_carries_the_divergence_limit(plane: RunningPlane) -> None:
    ids = devices(plane, "plan", 3)
    plane.store.record_inventory(ids[0], {"anti_rollback": {"pendulum": 2}})
    plane.store.set_online(ids[1], True)
    ch, stub = admin(plane)
    try:
        r = stub.CreateRollout(
            admin_pb2.CreateRolloutRequest(
                bundle=common_pb2.BundleRef(name="pendulum", version="1.1.0"),
                label_selector="group=plan",
                max_action_divergence=0.3,
            ),
            timeout=10,
        )
        assert [(p.device_id, p.outcome) for p in r.plan] == [
            (ids[0], "already newer"),
            (ids[1], "will update"),
            (ids[2], "offline"),
        ]
        assert "sequence 3 or more" in r.plan[0].detail
        assert [list(w.device_ids) for w in r.waves] == [ids[1:]]
        wait_until(lambda: desired_version(plane, ids[1]) == "1.1.0", 30, "dispatched")
        rec = plane.store.get_device(ids[1])
        assert rec is not None and rec.desired_bundle is not None
        assert rec.desired_bundle["gate"] == {"max_action_divergence": 0.3}
        assert desired_version(plane, ids[0]) == "1.0.0"
        got = get(stub, r.id)
        assert got.HasField("max_action_divergence") and got.max_action_divergence == 0.3
        dropped = [a for a in plane.store.audit_log(limit=1000) if a.action == "push.dropped"]
        assert ids[0] in [a.target for a in dropped]
    finally:
        ch.close()


def test_a_silent_device_fails_its_wave_after_the_health_window(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", factories=[FACTORY]) as p:
        key = p.home.key_path("model-signing", private=True)
        attest(p, p.publish(make_bundle(tmp_path / "b", key, version="1.1.0", sequence=2)))
        p.device("quiet-0", labels={"group": "quiet"})
        ch, stub = admin(p)
        try:
            r = stub.CreateRollout(
                admin_pb2.CreateRolloutRequest(
                    bundle=common_pb2.BundleRef(name="pendulum", version="1.1.0"),
                    device_ids=["quiet-0"],
                    health_window_s=1,
                ),
                timeout=10,
            )
            # no broker here: the desired state is set all the same (agents poll it)
            wait_until(lambda: desired_version(p, "quiet-0") == "1.1.0", 30, "dispatched")
            wait_until(lambda: get(stub, r.id).state == "paused", 30, "silent -> paused")
            assert "silent 1" in get(stub, r.id).reason
        finally:
            ch.close()


def test_the_cli_drives_a_rollout_end_to_end(plane: RunningPlane) -> None:
    import json

    from click.testing import CliRunner

    from edgeflux.cli import root

    ids = devices(plane, "cli", 2)
    plane.operator()  # the admin operator's files in the home
    base = ["rollout", "--home", str(plane.home.root), "--server", plane.address]

    def run(*args: str) -> Any:
        result = CliRunner().invoke(root, [*base, *args])
        return result

    # --home after the subcommand, as in `edgeflux rollout create X --home H`
    res = CliRunner().invoke(
        root,
        [
            "rollout",
            "create",
            "pendulum@1.1.0",
            "--label",
            "group=cli",
            "--waves",
            "0.5,1",
            "--max-action-divergence",
            "0.4",
            "--json",
            "--home",
            str(plane.home.root),
            "--server",
            plane.address,
        ],
    )
    assert res.exit_code == 0, res.output
    created = json.loads(res.stdout)
    rid = created["id"]
    assert {p["outcome"] for p in created["plan"]} == {"offline"}
    wait_until(lambda: desired_version(plane, ids[0]) == "1.1.0", 30, "wave 0 dispatched")
    res = run("pause", rid)
    assert res.exit_code == 0 and "paused" in res.output
    res = run("get", rid)
    assert res.exit_code == 0, res.output
    assert f"rollout {rid}: pendulum 1.1.0 (sequence 2)" in res.output
    assert "wave 0: 1 device(s), running" in res.output
    assert "shadow action divergence enforced at 0.4" in res.output
    res = run("list", "--json")
    assert rid in [r["id"] for r in json.loads(res.stdout)]
    res = run("resume", rid)
    assert res.exit_code == 0 and "running" in res.output
    res = run("abort", rid, "--rollback", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["state"] == "aborted"
    assert [desired_version(plane, d) for d in ids] == ["1.0.0", "1.0.0"]
    # user mistakes: a message, no traceback
    res = run("abort", rid)
    assert res.exit_code == 1 and "FAILED_PRECONDITION" in res.output
    assert "Traceback" not in res.output
    res = run("create", "pendulum", "--label", "group=cli")
    assert res.exit_code == 2 and "NAME@VERSION" in res.output
    res = run("create", "pendulum@1.1.0", "--label", "group=cli", "--waves", "a,b")
    assert res.exit_code == 2 and "comma-separated" in res.output
    res = run("create", "pendulum@1.1.0")
    assert res.exit_code == 2 and "--device" in res.output
    res = CliRunner().invoke(
        root, [*base[:3], "--server", plane.address, "--operator", "nobody", "get", rid]
    )
    assert res.exit_code == 1 and "operator add nobody" in res.output


def test_a_rollout_continues_after_a_plane_restart(tmp_path: Path) -> None:
    home = tmp_path / "plane"
    with running_plane(home, factories=[FACTORY]) as p:
        key = p.home.key_path("model-signing", private=True)
        attest(p, p.publish(make_bundle(tmp_path / "b", key, version="1.1.0", sequence=2)))
        for d in ("re-0", "re-1"):
            p.device(d, labels={"group": "re"})
        ch, stub = admin(p)
        try:
            rid = create(stub, "re", [0.5, 1.0])
        finally:
            ch.close()
        wait_until(lambda: desired_version(p, "re-0") == "1.1.0", 30, "wave 0 dispatched")
    with running_plane(home, factories=[FACTORY]) as p:
        assert desired_version(p, "re-1") == ""
        report(p, "re-0", "COMMITTED")
        wait_until(lambda: desired_version(p, "re-1") == "1.1.0", 30, "wave 1 after restart")
        rec = p.store.get_rollout(rid)
        assert rec is not None and rec.state == "running"
