"""The rollouts screen against a real control plane (rollout engine on, mTLS, a real
store): create a rollout, watch it, approve a wave and abort with typed confirmations,
see the plane's refusals, and a viewer who is offered none of it."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from textual.widgets import Button, DataTable, Static

from cloud.store import EventRecord
from cloud.testing import RunningPlane, running_plane
from protos import admin_pb2, admin_pb2_grpc, common_pb2
from tests.cloud.conftest import make_bundle
from tests.rollouts.attestations import attest
from tests.tui.conftest import until
from tui.app import EdgeFluxApp
from tui.client import AdminClient, TlsFiles, certificate_role
from tui.screens.rollouts import ConfirmRolloutScreen, RolloutsScreen

SIZE = (160, 48)
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlane]:
    root = tmp_path_factory.mktemp("tui-rollouts")
    with running_plane(root / "plane", factories=["cloud.rollouts.service:register"]) as p:
        key = p.home.key_path("model-signing", private=True)
        attest(p, p.publish(make_bundle(root / "b", key, version="1.1.0", sequence=2)))
        for i in range(4):
            p.device(f"robot-{i}", labels={"site": "lab"})
        yield p


def console(plane: RunningPlane, name: str, role: str) -> EdgeFluxApp:
    creds = plane.operator(name, role)
    client = AdminClient(plane.address, TlsFiles(creds.cert, creds.key, creds.ca))
    return EdgeFluxApp(client, role=certificate_role(creds.cert.read_bytes()))


def create(plane: RunningPlane, **kw: Any) -> admin_pb2.Rollout:
    with plane.channel(plane.operator()) as ch:
        return admin_pb2_grpc.FleetAdminServiceStub(ch).CreateRollout(  # type: ignore[no-any-return]
            admin_pb2.CreateRolloutRequest(
                bundle=common_pb2.BundleRef(name="pendulum", version="1.1.0"),
                label_selector="site=lab",
                health_window_s=600,
                **kw,
            ),
            timeout=10,
        )


def commit(plane: RunningPlane, device_id: str) -> None:
    """What ingest stores for an agent's COMMITTED update event."""
    assert plane.store.record_event(
        EventRecord(
            device_id=device_id,
            sequence=next(_seq),
            at=dt.datetime.now(dt.UTC),
            kind="update",
            state="COMMITTED",
            bundle={"name": "pendulum", "version": "1.1.0", "sequence": 2},
        )
    )


def text(app: EdgeFluxApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def cells(table: DataTable[str], row: int) -> list[str]:
    return [str(c) for c in table.get_row_at(row)]


async def select(pilot: Any, app: EdgeFluxApp, rollout_id: str) -> None:
    table = app.screen.query_one("#rollouts", DataTable)
    await until(pilot, lambda: rollout_id in app.screen.rollouts, timeout=20)  # type: ignore[attr-defined]
    keys = [str(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]
    table.move_cursor(row=keys.index(rollout_id))
    await until(pilot, lambda: text(app, "#rollout-gates").startswith(rollout_id))


async def confirm(pilot: Any, app: EdgeFluxApp, key: str, typed: str) -> ConfirmRolloutScreen:
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmRolloutScreen))
    modal = app.screen
    assert isinstance(modal, ConfirmRolloutScreen)
    await pilot.press(*typed)
    return modal


async def test_watch_approve_a_wave_then_abort_with_the_rollout_id_typed(
    plane: RunningPlane,
) -> None:
    r = create(plane, wave_fractions=[0.5, 1.0], approval_waves=[1], abort_threshold=0.5)
    first, second = r.waves[0].device_ids, r.waves[1].device_ids
    app = console(plane, "alice", "admin")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(app.screen, RolloutsScreen))
        await select(pilot, app, r.id)
        gates = text(app, "#rollout-gates")
        assert f"attestation: {r.attestation}" in gates and r.attestation
        assert "abort threshold 0.5 of the dispatched robots failed or regressed" in gates
        waves = app.screen.query_one("#rollout-waves", DataTable)
        await until(pilot, lambda: waves.row_count == 2)
        assert cells(waves, 1)[7] == "waits for approval"
        # watch: wave 0 goes out, its robots commit, the table follows the plane
        devices = app.screen.query_one("#rollout-devices", DataTable)
        await until(pilot, lambda: cells(waves, 0)[2] == "running", timeout=20)
        for d in first:
            commit(plane, d)
        await until(pilot, lambda: cells(waves, 0)[2] == "succeeded", timeout=20)
        assert cells(waves, 0)[3] == str(len(first))
        # the cursor moves to the wave that waits; its gate says so
        await pilot.press("tab", "down")  # focus the waves table, highlight wave 1
        await until(pilot, lambda: "wave 1 (" in text(app, "#rollout-gates"))
        assert "waits for approval" in text(app, "#rollout-gates")
        assert {cells(devices, i)[0] for i in range(devices.row_count)} == set(second)

        # approve: a wrong id keeps the button off; the right one sends it
        modal = await confirm(pilot, app, "a", "ro-nope")
        assert "Approve wave 1" in str(modal.query_one("#confirm-what", Static).content)
        assert modal.query_one("#confirm", Button).disabled
        await pilot.press(*["backspace"] * len("ro-nope"), *r.id, "enter")
        await until(pilot, lambda: isinstance(app.screen, RolloutsScreen))
        await until(pilot, lambda: "approve " + r.id + ": done" in text(app, "#rollout-action"))
        await until(pilot, lambda: cells(waves, 1)[7] == "approved by alice", timeout=20)
        assert plane.store.get_rollout(r.id) is not None
        await until(pilot, lambda: cells(waves, 1)[2] == "running", timeout=20)
        # a robot of the wave reports its switch held: the wave's device list shows it live
        assert plane.store.record_event(
            EventRecord(
                device_id=second[0],
                sequence=next(_seq),
                at=dt.datetime.now(dt.UTC),
                kind="update",
                state="HELD",
                reason_code="UPDATE_LOCKED",
                detail="held by 'picking' (mid-task)",
                bundle={"name": "pendulum", "version": "1.1.0", "sequence": 2},
            )
        )

        def live(device: str) -> str:
            rows = [cells(devices, i) for i in range(devices.row_count)]
            return next((row[4] for row in rows if row[0] == device), "")

        await until(pilot, lambda: live(second[0]) == "HELD (UPDATE_LOCKED)", timeout=20)

        # approving again: the plane refuses, the view says why
        await confirm(pilot, app, "a", r.id)
        await pilot.press("enter")
        await until(pilot, lambda: "Refused by the plane" in text(app, "#rollout-action"))
        assert "ApproveRollout" in text(app, "#rollout-action")

        # abort (rollback on): escape cancels and nothing changes; typed id aborts
        await confirm(pilot, app, "x", r.id)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RolloutsScreen))
        assert plane.store.get_rollout(r.id).state == "running"  # type: ignore[union-attr]
        modal = await confirm(pilot, app, "x", r.id)
        assert "previous bundle back" in str(modal.query_one("#confirm-what", Static).content)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RolloutsScreen))
        table = app.screen.query_one("#rollouts", DataTable)
        await until(pilot, lambda: cells(table, table.cursor_row)[2] == "aborted", timeout=20)
        assert "aborted by operator:alice; 4 device(s) to roll back" in text(app, "#rollout-gates")
    rec = plane.store.get_rollout(r.id)
    assert rec is not None and rec.state == "aborted"
    audit = [(a.actor, a.action) for a in plane.store.audit_log(limit=1000) if a.target == r.id]
    assert ("operator:alice", "rollout.approve") in audit


async def test_pause_and_resume_from_the_console(plane: RunningPlane) -> None:
    r = create(plane, wave_fractions=[0.5, 1.0], approval_waves=[0])
    app = console(plane, "bob", "admin")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f6")
        await select(pilot, app, r.id)
        await confirm(pilot, app, "p", r.id)
        await pilot.press("enter")
        await until(pilot, lambda: "the rollout is paused" in text(app, "#rollout-action"))
        assert plane.store.get_rollout(r.id).state == "paused"  # type: ignore[union-attr]
        assert "paused by operator:bob" in text(app, "#rollout-gates")
        await confirm(pilot, app, "u", r.id)
        await pilot.press("enter")
        await until(pilot, lambda: "the rollout is running" in text(app, "#rollout-action"))
        assert plane.store.get_rollout(r.id).state == "running"  # type: ignore[union-attr]
    with plane.channel(plane.operator()) as ch:
        admin_pb2_grpc.FleetAdminServiceStub(ch).AbortRollout(
            admin_pb2.RolloutId(id=r.id), timeout=10
        )


async def test_a_viewer_sees_rollouts_and_is_offered_no_action(plane: RunningPlane) -> None:
    r = create(plane, wave_fractions=[1.0], approval_waves=[0])
    app = console(plane, "vic", "viewer")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f6")
        await select(pilot, app, r.id)
        offered = {b.binding.action for b in app.screen.active_bindings.values()}
        assert "reload" in offered
        assert not any(a.startswith("act(") for a in offered)
        await pilot.press("a", "x")
        assert isinstance(app.screen, RolloutsScreen)  # no confirmation opened
    # the plane refuses a viewer on its own, whatever a console offers
    creds = plane.operator("vic", "viewer")
    client = AdminClient(plane.address, TlsFiles(creds.cert, creds.key, creds.ca))
    try:
        from tui.client import AdminError

        with pytest.raises(AdminError) as err:
            client.rollout_action("abort", r.id)
        assert "PERMISSION_DENIED" in str(err.value.code)
    finally:
        client.close()
    assert plane.store.get_rollout(r.id).state != "aborted"  # type: ignore[union-attr]
