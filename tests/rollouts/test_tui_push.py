"""The TUI's confirmed push (a one-wave CreateRollout) now succeeds on a real plane."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import DataTable, Static

from cloud.testing import running_plane
from tests.cloud.conftest import make_bundle
from tests.rollouts.attestations import attest
from tests.servers import wait_until
from tui.app import EdgeFluxApp
from tui.client import AdminClient, TlsFiles, certificate_role
from tui.screens._fleet_table import FleetTable
from tui.screens.bundles import BundlesScreen, PushScreen


async def _until(pilot, cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"condition not met within {timeout}s"
        await pilot.pause(0.02)


def test_a_confirmed_push_in_the_tui_starts_a_rollout_that_sets_desired_state(
    tmp_path: Path,
) -> None:
    with running_plane(tmp_path / "plane", factories=["cloud.rollouts.service:register"]) as plane:
        key = plane.home.key_path("model-signing", private=True)
        attest(plane, plane.publish(make_bundle(tmp_path / "b", key, version="1.1.0", sequence=2)))
        plane.device("robot-0", labels={"site": "lab"})
        creds = plane.operator("alice", "admin")
        client = AdminClient(plane.address, TlsFiles(creds.cert, creds.key, creds.ca))
        app = EdgeFluxApp(client, role=certificate_role(creds.cert.read_bytes()))
        text: list[str] = []

        async def drive() -> None:
            async with app.run_test(size=(150, 40)) as pilot:
                assert app.fleet_screen is not None
                fleet = app.fleet_screen.query_one("#fleet", FleetTable)
                await _until(pilot, lambda: fleet.row_count == 1)
                await pilot.press("m", "f3")  # mark robot-0, then the bundles screen
                bundles = app.screen.query_one("#bundles", DataTable)
                await _until(pilot, lambda: bundles.row_count == 1)
                await pilot.press("p")
                await _until(pilot, lambda: isinstance(app.screen, PushScreen))
                await pilot.press("tab", "tab", "enter")  # one robot: Push needs no typing
                await _until(pilot, lambda: isinstance(app.screen, BundlesScreen))
                state = app.screen.query_one("#bundles-state", Static)
                await _until(pilot, lambda: "Push" in str(state.content))
                text.append(str(state.content))

        asyncio.run(drive())
        assert "Push sent: rollout ro-" in text[0], text[0]
        assert "→ 1 robot(s)" in text[0]
        rec = plane.store.list_rollouts()
        assert len(rec) == 1 and rec[0].created_by == "operator:alice"
        wait_until(
            lambda: (
                (plane.store.get_device("robot-0").desired_bundle or {}).get("version")  # type: ignore[union-attr]
                == "1.1.0"
            ),
            10,
            "the pushed robot's desired state",
        )
