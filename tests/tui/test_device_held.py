"""The device view of a robot whose update waits before the switch (lock or window)."""

from __future__ import annotations

import pytest

from tests.tui.conftest import until
from tests.tui.sim import SimPlane, make_device
from tests.tui.test_app import SIZE, fleet_table, make_app, static_text
from tui.screens.device import DeviceScreen


@pytest.mark.parametrize(
    ("reason", "detail", "says"),
    [
        (
            "UPDATE_LOCKED",
            "locked by nav: mid-task (until 2026-12-07T15:10:00Z)",
            "the switch waits until the robot's update locks are released",
        ),
        (
            "OUTSIDE_WINDOW",
            "outside maintenance window dock; next opening 2026-12-08T01:00:00Z",
            "the switch waits for the maintenance window to open",
        ),
    ],
)
async def test_a_held_update_says_what_it_waits_for(
    sim: SimPlane, reason: str, detail: str, says: str
) -> None:
    d = make_device(1)
    d.update_state, d.update_reason, d.update_detail = "HELD", reason, detail
    sim.upsert(d)
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await until(pilot, lambda: "HELD" in fleet_table(app).cell_text("arm-00001", "update"))
        await pilot.press("down", "enter")  # arm-00001
        await until(pilot, lambda: isinstance(app.screen, DeviceScreen))
        await until(pilot, lambda: "HELD" in static_text(app, "#device-details"))
        text = static_text(app, "#device-details")
        assert f"update   HELD  reason {reason}  {detail}" in text
        assert f"held     candidate staged; {says}" in text


async def test_an_update_that_is_not_held_has_no_held_line(sim: SimPlane) -> None:
    app = make_app(sim)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: fleet_table(app).row_count == 12)
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, DeviceScreen))
        assert "held     " not in static_text(app, "#device-details")
