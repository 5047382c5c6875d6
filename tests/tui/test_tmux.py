"""Smoke test in a real terminal: `edgeflux tui` in a fixed-size tmux session against a
running control plane over mTLS; keys are sent with send-keys and the screen is read with
capture-pane, polling until the expected text appears (no fixed sleeps)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.testing import running_plane
from tests.servers import missing_service, wait_until

pytestmark = pytest.mark.services


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.session = "edgeflux-tui"

    def __call__(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False
        )
        return out.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", self.session, *keys)

    def wait_for(self, text: str, timeout_s: float = 30.0) -> str:
        try:
            wait_until(lambda: text in self.screen(), timeout_s, f"{text!r} on screen")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; screen was:\n{self.screen()}") from exc
        return self.screen()

    def press_until(self, key: str, text: str, tries: int = 5) -> None:
        """Send `key` until `text` shows. Only for the first key after start-up: Textual's
        terminal queries at start can swallow a key that arrives while they are answered."""
        for _ in range(tries):
            self.keys(key)
            try:
                wait_until(lambda: text in self.screen(), 3.0, f"{text!r} on screen")
                return
            except TimeoutError:
                continue
        raise AssertionError(f"{text!r} never appeared after {key!r}; screen:\n{self.screen()}")

    def alive(self) -> bool:
        return (
            subprocess.run(
                ["tmux", "-L", self.socket, "has-session", "-t", self.session],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        missing_service("tmux is not installed")
    t = Tmux(f"edgeflux-test-{uuid.uuid4().hex[:8]}")
    yield t
    t("kill-server")


def _edgeflux() -> list[str]:
    exe = Path(sys.executable).with_name("edgeflux")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeflux.cli"]


def test_edgeflux_tui_in_tmux(tmux: Tmux, tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", factories=[]) as plane:
        for i, site in enumerate(("lab", "lab", "yard")):
            plane.device(f"robot-{i}", labels={"site": site})
        creds = plane.operator("ops", "viewer")
        cmd = [
            *_edgeflux(),
            "tui",
            "--cloud",
            plane.address,
            "--cert",
            str(creds.cert),
            "--key",
            str(creds.key),
            "--ca",
            str(creds.ca),
            "--export-dir",
            str(tmp_path),
        ]
        tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            tmux.session,
            "-x",
            "132",
            "-y",
            "40",
            "-e",
            f"PATH={os.environ['PATH']}",
            # COLUMNS/LINES from pytest's environment would override the pane size
            subprocess.list2cmdline(["env", "-u", "COLUMNS", "-u", "LINES", *cmd]),
        )
        screen = tmux.wait_for("3 devices")
        assert "read-only" in screen  # a viewer certificate
        assert "robot-2" in screen
        tmux.press_until("/", "filter: text")
        tmux.keys("-l", "site=yard")
        tmux.keys("Enter")
        tmux.wait_for("showing 1")
        # enter closes the filter box (its top border goes): only then is the table focused
        wait_until(lambda: "▔▔▔" not in tmux.screen(), 30, "the filter box to close")
        tmux.keys("e")
        wait_until(lambda: any(tmp_path.glob("edgeflux-fleet-*.csv")), 20, "the CSV export")
        tmux.keys("F3")
        tmux.wait_for("no bundles published yet")
        tmux.keys(":")
        tmux.wait_for("Jump to")
        tmux.keys("-l", "routing")
        tmux.keys("Enter")
        tmux.wait_for("Routing is not available on this plane")
        tmux.keys("q")
        wait_until(lambda: not tmux.alive(), 20, "edgeflux tui to exit")
