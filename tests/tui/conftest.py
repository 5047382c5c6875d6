"""Fixtures for console tests: a simulated plane on a free port, and a condition wait."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator

import pytest
from textual.pilot import Pilot

from tests.tui.sim import SimPlane


@pytest.fixture
def sim() -> Iterator[SimPlane]:
    plane = SimPlane(devices=12).start()
    yield plane
    plane.stop()


async def until(pilot: Pilot[object], cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Let the app run until `cond()` holds; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {cond}")
        await pilot.pause(0.02)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests here in a fresh event loop (no async plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True
