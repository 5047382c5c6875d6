"""Pilot tests against the real control plane (cloud.testing): mTLS, operator roles,
the real WatchFleet stream fed by the real Store, and a plane restart."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import DataTable, Static

from cloud.store import BundleRecord, EventRecord, TelemetryRecord
from cloud.testing import RunningPlane, running_plane
from tests.servers import free_port
from tests.tui.conftest import until
from tui.app import EdgeFluxApp
from tui.client import AdminClient, TlsFiles, certificate_role
from tui.screens._fleet_table import FleetTable
from tui.screens.bundles import BundlesScreen, PushScreen
from tui.screens.device import DeviceScreen

SIZE = (150, 40)
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlane]:
    # factories=[]: only the plane's own services, so attestation/routing are absent
    with running_plane(tmp_path_factory.mktemp("plane"), factories=[]) as p:
        for i, site in enumerate(("lab", "lab", "yard")):
            p.device(f"robot-{i}", labels={"site": site, "role": "arm"})
        p.store.set_online("robot-0", True)
        p.store.add_bundle(
            BundleRecord(
                name="pendulum",
                version="1.0.0",
                sequence=1,
                efb_sha256="ab" * 32,
                size_bytes=4096,
                target_path="bundles/pendulum-1.0.0.efb",
                signer_key_id="k1",
            )
        )
        yield p


def client_for(plane: RunningPlane, name: str, role: str) -> tuple[AdminClient, str | None]:
    creds = plane.operator(name, role)
    tls = TlsFiles(creds.cert, creds.key, creds.ca)
    return AdminClient(plane.address, tls), certificate_role(creds.cert.read_bytes())


def rows(app: EdgeFluxApp) -> FleetTable:
    assert app.fleet_screen is not None
    return app.fleet_screen.query_one("#fleet", FleetTable)


async def test_live_fleet_filter_and_device_history_over_mtls(plane: RunningPlane) -> None:
    client, role = client_for(plane, "alice", "admin")
    assert role == "admin"
    app = EdgeFluxApp(client, role=role)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app).row_count == 3, timeout=20)
        assert app.connected and not app.read_only
        assert rows(app).cell_text("robot-0", "status") == "● online"
        # telemetry and an update event reach the table through the real watch stream
        assert plane.store.record_telemetry(
            "robot-1",
            1,
            [TelemetryRecord(at=NOW, loop_p99_ms=7.25, cpu_percent=55, update_state="STAGING")],
        )
        await until(pilot, lambda: rows(app).cell_text("robot-1", "p99") == "7.25")
        plane.store.record_event(
            EventRecord(
                "robot-1",
                1,
                NOW,
                "update",
                state="ROLLED_BACK",
                reason_code="HEALTH_WINDOW_FAILED",
                detail="health window failed: 12/100 tick slots missed their deadline",
            )
        )
        await until(
            pilot,
            lambda: (
                rows(app).cell_text("robot-1", "update") == "ROLLED_BACK (HEALTH_WINDOW_FAILED)"
            ),
        )
        await pilot.press("slash", *"site=yard", "enter")
        assert app.store.visible == ["robot-2"]
        await pilot.press("escape", "up", "enter")  # the cursor stayed on robot-2
        await until(pilot, lambda: isinstance(app.screen, DeviceScreen))
        assert app.screen.device_id == "robot-1"  # type: ignore[attr-defined]
        updates = app.screen.query_one("#device-updates", DataTable)
        await until(pilot, lambda: updates.row_count == 1)
        assert [str(c) for c in updates.get_row_at(0)][1:3] == [
            "ROLLED_BACK",
            "HEALTH_WINDOW_FAILED: health window failed: 12/100 tick slots missed their deadline",
        ]
        details = str(app.screen.query_one("#device-details", Static).content)
        assert "reason HEALTH_WINDOW_FAILED  health window failed: 12/100" in details
        title = str(app.screen.query_one("#spark-p99-title", Static).content)
        assert "control plane" in title and "7.25 ms" in title


async def test_push_reaches_the_plane_which_says_rollouts_are_off(plane: RunningPlane) -> None:
    client, role = client_for(plane, "alice", "admin")
    app = EdgeFluxApp(client, role=role)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app).row_count == 3, timeout=20)
        await pilot.press("m", "f3")
        bundles = app.screen.query_one("#bundles", DataTable)
        await until(pilot, lambda: bundles.row_count == 1)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PushScreen))
        await pilot.press("tab", "tab", "enter")  # one robot: Push needs no typing
        await until(pilot, lambda: isinstance(app.screen, BundlesScreen))
        # this plane has no rollout engine: the console reports the plane's own error
        state = app.screen.query_one("#bundles-state", Static)
        await until(pilot, lambda: "Push failed" in str(state.content))
        assert "rollouts are not enabled" in str(state.content)


async def test_viewer_certificate_is_read_only_and_missing_services_are_named(
    plane: RunningPlane,
) -> None:
    client, role = client_for(plane, "vic", "viewer")
    assert role == "viewer"
    app = EdgeFluxApp(client, role=role)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app).row_count == 3, timeout=20)
        assert app.read_only
        assert "push" not in {b.binding.action for b in app.screen.active_bindings.values()}
        await pilot.press("f4")
        state = lambda: str(app.screen.query_one("#att-state", Static).content)  # noqa: E731
        await until(pilot, lambda: "not available on this plane (UNIMPLEMENTED)" in state())
        await pilot.press("f5")
        route = lambda: str(app.screen.query_one("#route-state", Static).content)  # noqa: E731
        await until(pilot, lambda: "Routing is not available on this plane" in route())


async def test_plane_restart_shows_retrying_then_recovers(tmp_path: Path) -> None:
    home = tmp_path / "plane"
    first_cm = running_plane(home, factories=[])
    first = first_cm.__enter__()
    try:
        first.device("robot-a", labels={"site": "lab"})
        port = first.port
        creds = first.operator()
        app = EdgeFluxApp(AdminClient(first.address, TlsFiles(creds.cert, creds.key, creds.ca)))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: rows(app).row_count == 1, timeout=20)
            first_cm.__exit__(None, None, None)
            first_cm = None
            await until(pilot, lambda: not app.connected, timeout=20)
            assert "disconnected — retrying" in app.status_line
            with running_plane(home, factories=[], overrides={"grpc_port": port}) as second:
                second.device("robot-b", labels={"site": "yard"})
                await until(pilot, lambda: app.connected, timeout=20)
                await until(pilot, lambda: rows(app).row_count == 2)
                assert app.store.visible == ["robot-a", "robot-b"]
    finally:
        if first_cm is not None:
            first_cm.__exit__(None, None, None)


async def test_attestation_from_the_real_service_is_verified_locally(tmp_path: Path) -> None:
    from cloud.attest import statement
    from cloud.attest.service import record_from_envelope
    from cloud.store.attestations import AttestationStore
    from tui.verify import load_trusted_keys

    key = statement.generate_key(tmp_path / "keys" / "attestation.key")
    now = dt.datetime.now(dt.UTC)
    st = statement.build_statement(
        policy_sha256="ab" * 32,
        root_digest="cd" * 32,
        bundle_name="pendulum",
        predicate={
            "verdict": "attested",
            "bundle": {"name": "pendulum", "version": "1.1.0", "sequence": 2},
            "tasks": [{"task": "swingup", "episodes": 40, "p_holm": 0.004}],
            "gates": [{"gate": "numeric_parity", "passed": True}],
        },
        issued_at=now,
        expires_at=now + dt.timedelta(days=30),
    )
    raw = statement.envelope_bytes(statement.sign_statement(st, key))
    (tmp_path / "keys" / "attestation.key").unlink()
    with running_plane(tmp_path / "plane", factories=["cloud.attest.service:register"]) as p:
        AttestationStore(p.store.engine).put(record_from_envelope(raw, [key.public_key]))
        creds = p.operator()
        app = EdgeFluxApp(
            AdminClient(p.address, TlsFiles(creds.cert, creds.key, creds.ca)),
            trusted_keys=load_trusted_keys(tmp_path / "keys"),
        )
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f4")
            table = app.screen.query_one("#attestations", DataTable)
            await until(pilot, lambda: table.row_count == 1, timeout=20)
            assert [str(c) for c in table.get_row_at(0)][:5] == [
                "pendulum",
                "1.1.0",
                "ab" * 8,
                "attested",
                "verified",
            ]
            report = app.screen.query_one("#att-report", Static)
            await until(pilot, lambda: bool(report.content))
            console = Console(width=150, record=True, file=io.StringIO())
            console.print(report.content)
            text = console.export_text()
            assert f"signature verified with trusted key {key.key_id[:16]}" in text
            assert "swingup" in text and "numeric_parity" in text


async def test_routing_screen_shows_the_real_routers_health(tmp_path: Path) -> None:
    from cloud.home import init_home
    from protos import router_pb2, router_pb2_grpc

    home = init_home(tmp_path / "plane")
    with home.config_file.open("a") as fh:
        fh.write(
            "\n[router]\n"
            'budgets = [{scope = "acme", limit_usd = 2.0}]\n'
            "audit_every_n = 1\n"
            "[[router.backends]]\n"
            'name = "planner-1"\n'
            f'address = "127.0.0.1:{free_port()}"\n'  # nothing listens: never reached
            "tier = 2\n"
            'task_types = ["plan"]\n'
            "capacity = 2\n"
            "per_call_usd = 0.001\n"
        )
    with running_plane(home.root, factories=["cloud.router.service:register"]) as p:
        ghost = p.device("robot-g", labels={"tenant": "ghost"})
        with p.channel(ghost) as ch:
            resp = router_pb2_grpc.RouterServiceStub(ch).Route(
                router_pb2.RouteRequest(
                    task=router_pb2.Task(
                        task_type="plan",
                        qos=router_pb2.QOS_CLASS_INTERACTIVE,
                        deadline_ms=20_000,
                        observation=[1.0, 0.0, 0.0],
                        action_low=[-2.0],
                        action_high=[2.0],
                        work_units=1.0,
                    )
                ),
                timeout=30,
            )
        outcome = router_pb2.RouteOutcome.Name(resp.outcome).removeprefix("ROUTE_OUTCOME_")
        creds = p.operator()
        app = EdgeFluxApp(AdminClient(p.address, TlsFiles(creds.cert, creds.key, creds.ca)))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f5")
            backends = app.screen.query_one("#route-backends", DataTable)
            await until(pilot, lambda: backends.row_count == 1, timeout=20)
            assert str(backends.get_row_at(0)[0]) == "planner-1"
            budgets = app.screen.query_one("#route-budgets", DataTable)
            assert str(budgets.get_row_at(0)[0]) == "acme"
            decisions = app.screen.query_one("#route-decisions", DataTable)
            await until(pilot, lambda: decisions.row_count >= 1, timeout=20)
            row = [str(c) for c in decisions.get_row_at(0)]
            # the router's own decision, as the robot got it
            assert row[1:4] == ["plan", "interactive", outcome.lower()]
            assert row[-1] == resp.reason
            state = app.screen.query_one("#route-state", Static)
            await until(pilot, lambda: "audit log ✔ verified" in str(state.content), timeout=20)
