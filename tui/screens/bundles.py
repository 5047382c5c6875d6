"""The bundles screen and the push confirmation modal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from protos import admin_pb2
from tui.client import AdminError
from tui.messages import Fetched, FetchFailed
from tui.push import PushPlan, plan_push, selector_devices
from tui.query import QueryError
from tui.rows import DeviceRow
from tui.screens._chrome import ConnectionBar, fleet_app


def _ts(seconds: int) -> str:
    if seconds <= 0:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


class BundlesScreen(Screen[None]):
    """Published bundles; `p` pushes the highlighted one to marked robots or a selector."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload", "Reload"),
        Binding("p", "push", "Push…"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.bundles: list[admin_pb2.Bundle] = []

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        yield Static("loading bundles…", id="bundles-state", classes="state")
        table: DataTable[str] = DataTable(id="bundles", cursor_type="row", zebra_stripes=True)
        table.add_columns(
            "Bundle", "Version", "Seq", "Signer key", "Attestation", "Size", "Published"
        )
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "push" and fleet_app(self).read_only)

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="bundles", exit_on_error=False)
    def _load(self) -> None:
        try:
            bundles = fleet_app(self).client.list_bundles()
        except AdminError as exc:
            self.post_message(FetchFailed("bundles", exc))
            return
        self.post_message(Fetched("bundles", bundles))

    def on_fetched(self, msg: Fetched) -> None:
        if msg.what == "push":
            rollout, plan = msg.value
            text = (
                f"Push sent: rollout {rollout.id or '(no id)'}: {plan.bundle_name} "
                f"{plan.version} → {plan.count} robot(s), state {rollout.state or 'pending'}."
            )
            self.query_one("#bundles-state", Static).update(text)
            self.notify(text, title="Push sent")
            return
        if msg.what != "bundles":
            return
        self.bundles = sorted(msg.value, key=lambda b: (b.ref.name, -b.ref.sequence))
        t = self.query_one("#bundles", DataTable)
        t.clear()
        for b in self.bundles:
            t.add_row(
                b.ref.name,
                b.ref.version,
                str(b.ref.sequence),
                b.signer_key_id[:16] or "—",
                b.attestation_verdict or "none",
                f"{b.size_bytes / 1024:.0f} KiB",
                _ts(b.published_at.seconds),
                key=f"{b.ref.name}@{b.ref.version}",
            )
        n = len(self.bundles)
        self.query_one("#bundles-state", Static).update(
            f"{n} published bundle(s)" if n else "no bundles published yet"
        )

    def on_fetch_failed(self, msg: FetchFailed) -> None:
        if msg.what == "push":
            self.query_one("#bundles-state", Static).update(f"Push failed: {msg.error}")
            self.notify(str(msg.error), title="Push failed", severity="error", timeout=10)
            return
        if msg.what != "bundles":
            return
        prefix = "not available on this plane" if msg.error.not_available else "failed"
        self.query_one("#bundles-state", Static).update(f"Bundles {prefix}: {msg.error}")

    def selected(self) -> admin_pb2.Bundle | None:
        t = self.query_one("#bundles", DataTable)
        if t.row_count == 0:
            return None
        key = t.coordinate_to_cell_key(Coordinate(t.cursor_row, 0)).row_key.value
        return next((b for b in self.bundles if f"{b.ref.name}@{b.ref.version}" == key), None)

    def action_push(self) -> None:
        bundle = self.selected()
        if bundle is None:
            self.notify("No bundle selected.", severity="warning")
            return
        app = fleet_app(self)
        marked = app.store.marked()
        rows = [r for r in (app.store.get(i) for i in marked) if r is not None]
        selector = ""
        if not rows:
            # No marks: start from the label terms of the current fleet filter.
            selector = ",".join(
                t for t in app.store.query.text.split() if "=" in t and "!" not in t.split("=")[0]
            )
        self.app.push_screen(PushScreen(bundle, rows, selector), self._confirmed)

    def _confirmed(self, plan: PushPlan | None) -> None:
        if plan is None:
            self.notify("Push cancelled; nothing was sent.")
            return
        bundle = next(
            b
            for b in self.bundles
            if (b.ref.name, b.ref.version) == (plan.bundle_name, plan.version)
        )
        self._push(bundle, plan)

    @work(thread=True, group="push", exit_on_error=False)
    def _push(self, bundle: admin_pb2.Bundle, plan: PushPlan) -> None:
        try:
            rollout = fleet_app(self).client.push(bundle.ref, list(plan.device_ids))
        except AdminError as exc:
            self.post_message(FetchFailed("push", exc))
            return
        self.post_message(Fetched("push", (rollout, plan)))


class PushScreen(ModalScreen[PushPlan | None]):
    """Shows exactly what a push will do; more than one robot needs the count typed back."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, bundle: admin_pb2.Bundle, marked: list[DeviceRow], selector: str) -> None:
        super().__init__()
        self.bundle = bundle
        self.marked = marked
        self.selector = selector
        self.plan: PushPlan | None = None

    def compose(self) -> ComposeResult:
        b = self.bundle.ref
        with Vertical(id="push-box"):
            yield Label(f"Push {b.name} {b.version} (sequence {b.sequence})", id="push-title")
            if not self.marked:
                yield Label("No robots marked. Label selector (site=lab,role=arm):")
                yield Input(value=self.selector, id="push-selector")
            yield Static("", id="push-plan")
            yield Label("", id="push-ask")
            yield Input(placeholder="type the count or the bundle name", id="push-confirm")
            with Horizontal(id="push-buttons"):
                yield Button("Cancel", id="cancel", variant="default")
                yield Button("Push", id="confirm", variant="error", disabled=True)

    def on_mount(self) -> None:
        self._replan()
        first = "#push-selector" if not self.marked else "#push-confirm"
        self.query_one(first, Input).focus()

    def _replan(self) -> None:
        b = self.bundle.ref
        app = fleet_app(self)
        error = ""
        if self.marked:
            rows = list(self.marked)
            target = f"{len(rows)} marked"
        else:
            text = self.query_one("#push-selector", Input).value
            try:
                rows = selector_devices(list(app.store.all_rows()), text)
            except QueryError as exc:
                rows, error = [], str(exc)
            target = f"selector {text.strip()}"
        self.plan = plan_push(b.name, b.version, b.sequence, rows, target)
        lines = [error] if error else self.plan.describe()
        self.query_one("#push-plan", Static).update("\n".join(lines))
        ask = self.query_one("#push-ask", Label)
        confirm = self.query_one("#push-confirm", Input)
        if self.plan.count > 1:
            ask.update(f"Type {self.plan.count} or {b.name} to confirm:")
            confirm.display = True
        else:
            ask.update("Press Push to confirm." if self.plan.count == 1 else "No robots match.")
            confirm.display = False
        self._check()

    def _check(self) -> None:
        typed = self.query_one("#push-confirm", Input).value
        ok = self.plan is not None and self.plan.confirmation_ok(typed)
        self.query_one("#confirm", Button).disabled = not ok

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "push-selector":
            self._replan()
        else:
            self._check()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "push-confirm" and not self.query_one("#confirm", Button).disabled:
            self.dismiss(self.plan)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm" and self.plan is not None:
            self.dismiss(self.plan)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
