"""The EdgeFlux operator console: an App composing the fleet, bundles, attestations,
routing and rollouts screens over one `AdminClient`.

Usage::

    edgeflux tui --cloud localhost:7443 --cert op.crt --key op.key --ca fleet-ca.crt

Data flow: a thread worker consumes `WatchFleet` and posts `FleetBatch` messages; the
app applies them to the `FleetStore` (filter, sort, marks live there) and hands the
resulting diff to the fleet screen, which updates rows by key. Every other call runs in
a thread worker too, so the UI thread never waits on the network.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from textual import work
from textual.app import SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.theme import Theme

from tui.client import AdminClient, AdminError, FleetWatch, iter_batches
from tui.console import ConsoleApp
from tui.messages import ConnectionChanged, FleetBatch
from tui.screens._chrome import HelpScreen, JumpScreen
from tui.screens.attestations import AttestationsScreen
from tui.screens.bundles import BundlesScreen
from tui.screens.device import DeviceScreen
from tui.screens.fleet import FleetScreen
from tui.screens.rollouts import RolloutsScreen
from tui.screens.routing import RoutingScreen
from tui.store import FleetStore
from tui.verify import TrustedKey

__all__ = ["HIGH_CONTRAST", "EdgeFluxApp"]

HIGH_CONTRAST = Theme(
    name="edgeflux-high-contrast",
    primary="#FFFF00",
    secondary="#00FFFF",
    accent="#FF00FF",
    foreground="#FFFFFF",
    background="#000000",
    surface="#000000",
    panel="#202020",
    success="#00FF00",
    warning="#FFFF00",
    error="#FF4040",
    dark=True,
)
THEMES = ("textual-dark", "textual-light", HIGH_CONTRAST.name)
SCREEN_NAMES = ("fleet", "bundles", "attestations", "routing", "rollouts")
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0


class EdgeFluxApp(ConsoleApp):
    """The operator console. `client` is the only way it reaches the plane."""

    # absolute, so subclasses defined elsewhere (tests, bench) find it too
    CSS_PATH = Path(__file__).with_name("edgeflux.tcss")
    TITLE = "EdgeFlux"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "fleet": FleetScreen,
        "bundles": BundlesScreen,
        "attestations": AttestationsScreen,
        "routing": RoutingScreen,
        "rollouts": RolloutsScreen,
    }
    DEFAULT_MODE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("colon", "jump", "Jump"),
        Binding("f2", "go('fleet')", "Fleet"),
        Binding("f3", "go('bundles')", "Bundles"),
        Binding("f4", "go('attestations')", "Attest."),
        Binding("f5", "go('routing')", "Routing"),
        Binding("f6", "go('rollouts')", "Rollouts"),
        Binding("ctrl+t", "next_theme", "Theme", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client: AdminClient,
        *,
        read_only: bool = False,
        role: str | None = None,
        trusted_keys: Iterable[TrustedKey] = (),
        export_dir: Path | None = None,
        theme: str = "textual-dark",
        clock: Callable[[], float] = time.time,
        plane_name: str | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.plane_name = plane_name or client.target
        self.role = role
        # A viewer certificate cannot mutate anything server-side; do not offer it.
        self.read_only = read_only or role == "viewer"
        self.trusted_keys = list(trusted_keys)
        self.export_dir = export_dir or Path.cwd()
        self.store = FleetStore(clock)
        self.fleet_screen: FleetScreen | None = None
        self._stop = threading.Event()
        self._watch: FleetWatch | None = None
        self._conn_detail = f"connecting to {self.plane_name}…"
        self.register_theme(HIGH_CONTRAST)
        self.theme = theme

    # ---- lifecycle -----------------------------------------------------------
    def on_mount(self) -> None:
        self.sub_title = self.plane_name + ("  [read-only]" if self.read_only else "")
        self.refresh_status()
        self._watch_fleet()

    def on_unmount(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()

    @work(thread=True, exclusive=True, group="watch", exit_on_error=False)
    def _watch_fleet(self) -> None:
        """Consume WatchFleet forever: snapshot, then changes; reconnect with backoff."""
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            reason = "stream ended"
            try:
                self._watch = watch = self.client.watch()
            except (AdminError, ValueError) as exc:
                reason = str(exc)
            else:
                for batch in iter_batches(watch, self._stop):
                    if batch.snapshot is not None or batch.changes:
                        delay = RETRY_MIN_S
                        self.post_message(FleetBatch(batch))
                    if batch.error is not None:
                        code = batch.error.code.name if batch.error.code else ""
                        reason = f"{code} {batch.error}"
            if self._stop.is_set():
                return
            self.post_message(
                ConnectionChanged(
                    False,
                    f"✖ {self.plane_name} disconnected — retrying in {delay:.1f}s "
                    f"({reason.strip()[:80]})"
                    + (
                        "; no --cert/--key/--ca given: an mTLS plane refuses plaintext"
                        if getattr(self.client, "plaintext", False)
                        else ""
                    ),
                )
            )
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def on_fleet_batch(self, msg: FleetBatch) -> None:
        batch = msg.batch
        if batch.snapshot is not None:
            diff = self.store.replace_all(batch.snapshot)
            self.connected = True
            self._conn_detail = f"● {self.plane_name}"
            if self.fleet_screen is not None:
                self.fleet_screen.show_diff(diff)
        if batch.changes:
            diff = self.store.apply(batch.changes)
            if self.fleet_screen is not None:
                self.fleet_screen.show_diff(diff)
        if isinstance(self.screen, RolloutsScreen):
            self.screen.fleet_changed()
        self.refresh_status()

    def on_connection_changed(self, msg: ConnectionChanged) -> None:
        self.connected = msg.connected
        self._conn_detail = msg.detail
        self.refresh_status()

    def refresh_status(self) -> None:
        c = self.store.counts()
        live = f"PAUSED ({c['pending']} pending, space resumes)" if self.store.paused else "live"
        parts = [
            self._conn_detail,
            f"{c['total']} devices",
            f"{c['online']} online",
            f"showing {c['visible']}",
        ]
        if c["marked"]:
            parts.append(f"{c['marked']} marked")
        if self.store.query.text:
            parts.append(f"filter: {self.store.query.text}")
        parts.append(live)
        if self.read_only:
            parts.append("read-only")
        self.status_line = " · ".join(parts)

    # ---- navigation ----------------------------------------------------------
    def action_go(self, name: str) -> None:
        # Leave a pushed device screen before switching, so coming back shows the list.
        while isinstance(self.screen, DeviceScreen):
            self.pop_screen()
        self.switch_mode(name)

    def open_device(self, device_id: str) -> None:
        self.push_screen(DeviceScreen(device_id))

    def action_jump(self) -> None:
        self.push_screen(JumpScreen(), self._jump_to)

    def _jump_to(self, target: str | None) -> None:
        if not target:
            return
        word, _, rest = target.partition(" ")
        word = word.lower()
        if word in ("device", "dev", "d") and rest.strip():
            device_id = rest.strip()
            if self.store.get(device_id) is None:
                self.notify(f"no device {device_id!r} in the fleet", severity="error")
                return
            self.open_device(device_id)
            return
        matches = [n for n in SCREEN_NAMES if n.startswith(word)]
        if len(matches) != 1:
            self.notify(
                f"no screen {target!r}; try {', '.join(SCREEN_NAMES)} or device <id>",
                severity="error",
            )
            return
        self.action_go(matches[0])

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        ranked: list[tuple[int, str, str]] = []
        seen: set[str] = set()
        screen = self.screen
        for active in screen.active_bindings.values():
            binding = active.binding
            if not active.enabled or not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            # this screen's keys first, then the app's, then the focused widget's
            rank = 0 if active.node is screen else 1 if active.node is self else 2
            ranked.append((rank, self.get_key_display(binding), binding.description))
        ranked.sort(key=lambda r: r[0])
        rows = [(key, desc) for _, key, desc in ranked]
        rows.append(("ctrl+p", "Command palette"))
        title = type(self.screen).__name__.removesuffix("Screen").lower() or "console"
        self.push_screen(HelpScreen(title, rows))

    def action_next_theme(self) -> None:
        current = THEMES.index(self.theme) if self.theme in THEMES else -1
        self.theme = THEMES[(current + 1) % len(THEMES)]
        self.notify(f"theme: {self.theme}")

    # ---- export --------------------------------------------------------------
    def export_view(self, fmt: Literal["csv", "json"]) -> None:
        """Write the fleet's current filtered, sorted view; the text is built here (the
        store is only touched on this thread), the file written by a worker."""
        text = self.store.export(fmt)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.export_dir / f"edgeflux-fleet-{stamp}.{fmt}"
        self._write_export(path, text, len(self.store.visible))

    @work(thread=True, group="export", exit_on_error=False)
    def _write_export(self, path: Path, text: str, count: int) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            self.call_from_thread(
                self.notify, f"export to {path.parent} failed: {exc}", severity="error"
            )
            return
        self.call_from_thread(self.notify, f"exported {count} devices to {path}", title="Export")

    # ---- command palette -----------------------------------------------------
    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name in SCREEN_NAMES:
            yield SystemCommand(
                f"Go to {name}", f"Show the {name} screen", lambda n=name: self.action_go(n)
            )
        yield SystemCommand("Jump…", "Jump to a screen or a device by id", self.action_jump)
        yield SystemCommand("Help", "Keys of this screen", self.action_help)
        yield SystemCommand("Next theme", "dark → light → high contrast", self.action_next_theme)
        yield SystemCommand(
            "High-contrast theme",
            "Switch to the high-contrast theme",
            lambda: setattr(self, "theme", HIGH_CONTRAST.name),
        )
        fleet = self.fleet_screen
        if fleet is not None:
            yield SystemCommand("Filter fleet", "Filter by text or selectors", fleet.action_filter)
            yield SystemCommand(
                "Pause / resume live updates", "Hold back fleet changes", fleet.action_pause
            )
            yield SystemCommand(
                "Mark shown devices", "Mark every device shown", fleet.action_mark_all
            )
            yield SystemCommand("Unmark all", "Clear all marks", fleet.action_unmark_all)
            yield SystemCommand(
                "Export view as CSV", "Filtered view to a CSV file", lambda: self.export_view("csv")
            )
            yield SystemCommand(
                "Export view as JSON",
                "Filtered view to a JSON file",
                lambda: self.export_view("json"),
            )
            if not self.read_only:
                yield SystemCommand(
                    "Push a bundle…", "Push to marked devices or a selector", fleet.action_push
                )
