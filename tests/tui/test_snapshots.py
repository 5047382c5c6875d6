"""Snapshots of every screen at two terminal sizes (Textual pinned at 8.2.8; data fixed).

Update after an intended visual change with `pytest tests/tui/test_snapshots.py --snapshot-update`
and review the SVGs under tests/tui/__snapshots__/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from tests.tui.conftest import until
from tests.tui.sim import SimPlane, write_attestation_key
from tui.app import EdgeFluxApp
from tui.client import AdminClient
from tui.screens._fleet_table import FleetTable
from tui.verify import load_trusted_keys

SIZES = [pytest.param((120, 36), id="120x36"), pytest.param((80, 24), id="80x24")]


def _app(sim: SimPlane, tmp_path: Path, **kw: Any) -> EdgeFluxApp:
    keys = load_trusted_keys(write_attestation_key(tmp_path))
    return EdgeFluxApp(
        AdminClient(sim.target), trusted_keys=keys, export_dir=tmp_path, plane_name="sim", **kw
    )


async def _fleet_loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await until(pilot, lambda: app.fleet_screen is not None and len(app.store) == 12)  # type: ignore[attr-defined]
    await until(pilot, lambda: app.screen.query_one("#fleet", FleetTable).row_count == 12)


def _steady_inputs(pilot: Pilot[Any]) -> None:
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False


def _flow(*keys: str, wait: Callable[[Pilot[Any]], Awaitable[None]] | None = None) -> Any:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _fleet_loaded(pilot)
        await pilot.press(*keys)
        if wait is not None:
            await wait(pilot)
        _steady_inputs(pilot)

    return run_before


def _static_has(selector: str, text: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def wait(pilot: Pilot[Any]) -> None:
        def ok() -> bool:
            found = pilot.app.screen.query(selector)
            return bool(found) and text in str(found.first(Static).content)

        await until(pilot, ok)

    return wait


def _rows(selector: str, n: int) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def wait(pilot: Pilot[Any]) -> None:
        await until(
            pilot,
            lambda: (
                bool(pilot.app.screen.query(selector))
                and pilot.app.screen.query_one(selector, DataTable).row_count == n
            ),
        )

    return wait


async def _device_loaded(pilot: Pilot[Any]) -> None:
    await _static_has("#device-bundle", "signature verified")(pilot)
    await _static_has("#device-published", "signer key")(pilot)
    await _static_has("#spark-p99-title", "control plane")(pilot)


FLOWS = {
    "fleet": _flow(),
    "fleet_filtered_sorted_marked": _flow("slash", *"site=lab", "enter", "6", "m", "m"),
    "device": _flow("down", "enter", wait=_device_loaded),
    "bundles": _flow("f3", wait=_rows("#bundles", 3)),
    "push_confirmation": _flow("m", "m", "f3", wait=None),
    "attestations": _flow("f4", wait=_static_has("#att-state", "2 attestation(s)")),
    "routing": _flow("f5", wait=_static_has("#route-state", "audit log")),
    "help": _flow("question_mark"),
    "rollouts": _flow("f6", wait=_static_has("#rollout-gates", "wave 1 (pending)")),
}


async def _abort_modal(pilot: Any) -> None:
    await _static_has("#rollout-gates", "wave 1 (pending)")(pilot)
    await pilot.press("x", *"ro-00000000gate")
    await until(pilot, lambda: bool(pilot.app.screen.query("#confirm-what")))


FLOWS["rollout_abort_confirmation"] = _flow("f6", wait=_abort_modal)


async def _push_modal(pilot: Pilot[Any]) -> None:
    await _rows("#bundles", 3)(pilot)
    await pilot.press("p")
    await until(pilot, lambda: bool(pilot.app.screen.query("#push-plan")))


FLOWS["push_confirmation"] = _flow("m", "m", "f3", wait=_push_modal)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("screen", list(FLOWS))
def test_screen_snapshot(
    screen: str, size: tuple[int, int], snap_compare: Any, sim: SimPlane, tmp_path: Path
) -> None:
    app = _app(sim, tmp_path)
    assert snap_compare(app, terminal_size=size, run_before=FLOWS[screen])


def test_high_contrast_theme_snapshot(snap_compare: Any, sim: SimPlane, tmp_path: Path) -> None:
    app = _app(sim, tmp_path, theme="edgeflux-high-contrast", read_only=True)
    assert snap_compare(app, terminal_size=(120, 36), run_before=_flow())
