"""Pilot tests of the console against a simulated plane over a real gRPC socket."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from textual.widgets import Button, DataTable, Input, Static

from protos import admin_pb2
from tests.tui.conftest import until
from tests.tui.sim import SimPlane, make_device, write_attestation_key
from tui.app import EdgeFluxApp
from tui.client import AdminClient
from tui.screens._fleet_table import FleetTable
from tui.screens.bundles import BundlesScreen, PushScreen
from tui.screens.device import DeviceScreen
from tui.screens.fleet import FleetScreen
from tui.verify import load_trusted_keys

SIZE = (150, 40)


def make_app(sim: SimPlane, tmp_path: Path | None = None, **kw: object) -> EdgeFluxApp:
    keys = load_trusted_keys(write_attestation_key(tmp_path)) if tmp_path else []
    return EdgeFluxApp(
        AdminClient(sim.target),
        trusted_keys=keys,
        export_dir=tmp_path,
        **kw,  # type: ignore[arg-type]
    )


def fleet_table(app: EdgeFluxApp) -> FleetTable:
    assert app.fleet_screen is not None
    return app.fleet_screen.query_one("#fleet", FleetTable)


def table_ids(app: EdgeFluxApp) -> list[str]:
    """Device ids as drawn on screen, top to bottom (the table renders from the store)."""
    t = fleet_table(app)
    ids = []
    for y in range(1, t.size.height):
        words = t.render_line(y).text.split()
        if words and words[0] == "●":
            words = words[1:]
        if words:
            ids.append(words[0])
    return ids


def static_text(app: EdgeFluxApp, selector: str) -> str:
    content = app.screen.query_one(selector, Static).content
    if isinstance(content, str):
        return Text.from_markup(content).plain
    console = Console(width=150, record=True, file=io.StringIO())
    console.print(content)
    return console.export_text()


async def test_fleet_shows_the_plane_and_updates_a_row_in_place(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        assert "12 devices" in app.status_line and "10 online" in app.status_line
        t = fleet_table(app)
        row_before = app.store.index_of("arm-00004")
        changed = make_device(4)
        changed.health.cpu_percent = 97
        changed.update_state = "SWITCHED"
        changed.update_reason = ""
        sim.upsert(changed)
        await until(pilot, lambda: t.cell_text("arm-00004", "cpu") == "97")
        assert t.cell_text("arm-00004", "update") == "SWITCHED"
        assert t.row_count == 12 and app.store.index_of("arm-00004") == row_before
        sim.remove("arm-00011")
        await until(pilot, lambda: fleet_table(app).row_count == 11)


async def test_sort_keys_reorder_rows_and_mark_the_header(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("6")  # p99 column
        p99 = [app.store.get(i).loop_p99_ms for i in table_ids(app)]  # type: ignore[union-attr]
        assert p99 == sorted(p99)
        header = str(fleet_table(app).headers["p99"])
        assert "▲" in header
        assert "p99 ms 6 ▲" in fleet_table(app).render_line(0).text
        await pilot.press("6")
        p99 = [app.store.get(i).loop_p99_ms for i in table_ids(app)]  # type: ignore[union-attr]
        assert p99 == sorted(p99, reverse=True)
        assert "▼" in str(fleet_table(app).headers["p99"])


async def test_mouse_sorts_by_header_and_opens_a_row(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        t = fleet_table(app)
        # the p99 header: past the mark column and five columns before it
        x = sum(w + 2 for w in t.widths[:6]) + 2
        assert t.column_at(x) == "p99"
        await pilot.click("#fleet", offset=(x, 0))
        assert app.store.sort_key == "p99"
        await pilot.click("#fleet", offset=(x, 3))  # third row
        assert t.cursor_id == app.store.visible[2]
        await pilot.double_click("#fleet", offset=(x, 3))
        await until(pilot, lambda: isinstance(app.screen, DeviceScreen))
        assert app.screen.device_id == app.store.visible[2]  # type: ignore[attr-defined]


async def test_filter_narrows_the_table_and_survives_screen_changes(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("slash", *"site=lab role=arm", "enter")
        assert table_ids(app) == ["arm-00000", "arm-00006"]
        assert "filter: site=lab role=arm" in app.status_line
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, BundlesScreen))
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))
        assert table_ids(app) == ["arm-00000", "arm-00006"]
        # a device that starts matching appears without a reload
        d = make_device(3)
        d.labels["role"] = "arm"
        sim.upsert(d)
        await until(pilot, lambda: table_ids(app) == ["arm-00000", "arm-00003", "arm-00006"])
        # a bad filter is refused and the old one stays
        await pilot.press("slash", "end", *" =oops", "enter")
        assert app.store.query.text == "site=lab role=arm"
        await pilot.press("escape", "escape")
        assert fleet_table(app).row_count == 12


async def test_push_cancel_sends_nothing_and_confirm_pushes_the_marked(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("m", "m", "m")  # marks arm-00000..2, cursor moves down
        assert app.store.marked() == ["arm-00000", "arm-00001", "arm-00002"]
        assert fleet_table(app).cell_text("arm-00001", "mark") == "●"
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, BundlesScreen))
        bundles = app.screen.query_one("#bundles", DataTable)
        await until(pilot, lambda: bundles.row_count == 3)
        await pilot.press("p")  # first row: pendulum 1.2.0
        await until(pilot, lambda: isinstance(app.screen, PushScreen))
        plan = static_text(app, "#push-plan")
        assert "Push pendulum 1.2.0 (sequence 3) to 3 robots (3 marked)" in plan
        assert "2 × pendulum 1.1.0 → pendulum 1.2.0" in plan
        assert "1 × pendulum 1.0.0 → pendulum 1.2.0" in plan
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, BundlesScreen))
        assert sim.state.rollouts == []

        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PushScreen))
        confirm = app.screen.query_one("#confirm", Button)
        await pilot.press("2")
        assert confirm.disabled  # the wrong count does not unlock it
        await pilot.press("backspace", "3")
        assert not confirm.disabled
        await pilot.press("enter")
        await until(pilot, lambda: len(sim.state.rollouts) == 1)
        req = sim.state.rollouts[0]
        assert list(req.device_ids) == ["arm-00000", "arm-00001", "arm-00002"]
        assert (req.bundle.name, req.bundle.version) == ("pendulum", "1.2.0")
        await until(pilot, lambda: "Push sent: rollout ro-1" in static_text(app, "#bundles-state"))


async def test_push_by_selector_without_marks(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("slash", *"site=yard", "enter", "f3")
        bundles = app.screen.query_one("#bundles", DataTable)
        await until(pilot, lambda: bundles.row_count == 3)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PushScreen))
        assert app.screen.query_one("#push-selector", Input).value == "site=yard"
        assert "to 4 robots (selector site=yard)" in static_text(app, "#push-plan")
        await pilot.press("tab", *"pendulum", "enter")
        await until(pilot, lambda: len(sim.state.rollouts) == 1)
        assert list(sim.state.rollouts[0].device_ids) == [
            "arm-00002",
            "arm-00005",
            "arm-00008",
            "arm-00011",
        ]


@pytest.mark.parametrize("how", ["flag", "viewer certificate"])
async def test_read_only_offers_no_push(sim: SimPlane, how: str) -> None:
    kw = {"read_only": True} if how == "flag" else {"role": "viewer"}
    app = make_app(sim, **kw)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        assert app.read_only and "read-only" in app.status_line
        assert "push" not in {b.binding.action for b in app.screen.active_bindings.values()}
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Filter fleet" in titles and not any("Push" in t for t in titles)
        await pilot.press("m", "p")
        assert isinstance(app.screen, FleetScreen)
        await pilot.press("f3")
        bundles = app.screen.query_one("#bundles", DataTable)
        await until(pilot, lambda: bundles.row_count == 3)
        await pilot.press("p")
        assert isinstance(app.screen, BundlesScreen) and sim.state.rollouts == []


async def test_disconnect_shows_retrying_and_recovers_with_a_fresh_snapshot(
    sim: SimPlane,
) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        assert app.connected
        sim.stop()
        await until(pilot, lambda: not app.connected)
        assert "disconnected — retrying" in app.status_line
        assert app.screen.query_one("#conn").has_class("-disconnected")
        # the fleet changed while we were away
        del sim.state.devices["arm-00000"]
        sim.state.devices["arm-00099"] = make_device(99)
        sim.start()
        await until(pilot, lambda: app.connected, timeout=15)
        await until(pilot, lambda: "arm-00099" in table_ids(app))
        assert "arm-00000" not in table_ids(app) and fleet_table(app).row_count == 12


async def test_pause_holds_rows_until_resumed(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("space")
        d = make_device(5)
        d.health.cpu_percent = 1
        sim.upsert(d)
        await until(pilot, lambda: app.store.counts()["pending"] == 1)
        assert fleet_table(app).cell_text("arm-00005", "cpu") != "1"
        assert "PAUSED (1 pending" in app.status_line
        await pilot.press("space")
        assert fleet_table(app).cell_text("arm-00005", "cpu") == "1"


async def test_device_screen_shows_history_and_verified_attestation(
    sim: SimPlane, tmp_path: Path
) -> None:
    app = make_app(sim, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("down", "enter")  # arm-00001
        await until(pilot, lambda: isinstance(app.screen, DeviceScreen))
        await until(pilot, lambda: "✔" in static_text(app, "#device-bundle"))
        bundle = static_text(app, "#device-bundle")
        assert "parity attestation  attested" in bundle and "signature verified" in bundle
        updates = app.screen.query_one("#device-updates", DataTable)
        await until(pilot, lambda: updates.row_count == 4)
        assert "control plane" in str(app.screen.query_one("#spark-p99-title").render())
        await until(pilot, lambda: "signer key" in static_text(app, "#device-published"))
        assert "signer key 0202020202020202 · 49 KiB · target pendulum/1.1.0.efb" in static_text(
            app, "#device-published"
        )
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


async def test_unavailable_services_say_so(sim: SimPlane) -> None:
    sim.state.router_enabled = False
    sim.state.attestation_enabled = False
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await until(pilot, lambda: "not available" in static_text(app, "#att-state"))
        assert "UNIMPLEMENTED" in static_text(app, "#att-state")
        await pilot.press("f5")
        await until(pilot, lambda: "not available" in static_text(app, "#route-state"))


async def test_attestation_report_and_routing_health(sim: SimPlane, tmp_path: Path) -> None:
    app = make_app(sim, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await until(pilot, lambda: "2 attestation(s)" in static_text(app, "#att-state"))
        report = static_text(app, "#att-report")
        assert "signature verified with trusted key" in report
        assert "swingup" in report and "numeric_parity" in report
        await pilot.press("colon", *"rout", "enter")
        await until(pilot, lambda: "audit log ✔ verified" in static_text(app, "#route-state"))
        backends = app.screen.query_one("#route-backends", DataTable)
        assert backends.row_count == 2
        assert app.screen.query_one("#route-decisions", DataTable).row_count == 2


async def test_help_lists_the_screen_bindings(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        table = app.screen.query_one("#help-table", DataTable)
        actions = {str(table.get_row_at(i)[1]) for i in range(table.row_count)}
        assert {"Filter", "Pause/live", "Mark", "Sort by p99 ms", "Jump", "Help"} <= actions
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


async def test_export_writes_the_filtered_view(sim: SimPlane, tmp_path: Path) -> None:
    app = make_app(sim, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("slash", *"state=failed", "enter", "e")
        await until(pilot, lambda: list(tmp_path.glob("edgeflux-fleet-*.csv")))
        (path,) = tmp_path.glob("edgeflux-fleet-*.csv")
        rows = list(csv.DictReader(path.open()))
        assert [r["id"] for r in rows] == ["arm-00004", "arm-00009"]
        assert {r["update"] for r in rows} == {"FAILED"}


async def test_jump_to_a_device_by_id(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("colon", *"device arm-00007", "enter")
        await until(pilot, lambda: isinstance(app.screen, DeviceScreen))
        assert app.screen.device_id == "arm-00007"  # type: ignore[attr-defined]
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, BundlesScreen))


def test_watch_stream_delivers_snapshot_then_changes(sim: SimPlane) -> None:
    client = AdminClient(sim.target)
    watch = client.watch()
    try:
        first = watch.next_batch(wait_s=5)
        assert first is not None and first.snapshot is not None
        assert [r.id for r in first.snapshot][:2] == ["arm-00000", "arm-00001"]
        sim.upsert(make_device(3))
        sim.remove("arm-00004")
        got: list[object] = []
        for _ in range(50):
            b = watch.next_batch(wait_s=0.1)
            if b is not None and b.changes:
                got += b.changes
            if len(got) >= 2:
                break
        assert [getattr(c, "id", c) for c in got] == ["arm-00003", "arm-00004"]
    finally:
        watch.cancel()
        client.close()


def test_device_row_from_the_wire() -> None:
    from tui.client import device_row

    d = admin_pb2.Device(id="x", labels={"b": "2", "a": "1"}, online=True)
    d.last_seen.seconds = 5
    row = device_row(d)
    assert row.labels == (("a", "1"), ("b", "2"))
    assert row.last_seen == 5.0 and row.online
