"""Rollouts: the list, the highlighted rollout's gates and waves, its devices' states, and
approve / pause / resume / abort, each confirmed by typing the rollout id."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Input, Label, Static

from protos import admin_pb2
from tui.client import AdminError
from tui.messages import Fetched, FetchFailed
from tui.rollout_view import (
    SOAK_COLUMNS,
    ActionRequest,
    device_rows,
    gate_lines,
    rollout_row,
    soak_rows,
    soak_wave,
    wave_row,
    wave_to_approve,
)
from tui.screens._chrome import ConnectionBar, fleet_app

POLL_S = 2.0
LIVE_S = 0.5
MUTATING = ("approve", "pause", "resume", "abort")


def _row_key(table: DataTable[str]) -> str | None:
    if table.row_count == 0:
        return None
    key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
    return None if key is None else str(key)


def _refill(table: DataTable[str], rows: list[tuple[str, tuple[str, ...]]]) -> None:
    """Replace the rows, keeping the cursor on the same key where it still exists."""
    keep = _row_key(table)
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    keys = [k for k, _ in rows]
    if keep in keys:
        table.move_cursor(row=keys.index(keep), animate=False)


class RolloutsScreen(Screen[None]):
    """Polled every couple of seconds while shown; actions go to the plane as typed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload", "Reload"),
        Binding("a", "act('approve')", "Approve…"),
        Binding("p", "act('pause')", "Pause…"),
        Binding("u", "act('resume')", "Resume…"),
        Binding("x", "act('abort')", "Abort…"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rollouts: dict[str, admin_pb2.Rollout] = {}
        self._shown_id: str | None = None  # the rollout whose waves are shown
        self._live_pending = False  # a refresh of the robots' live states is scheduled

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        yield Static("loading rollouts…", id="rollouts-state", classes="state")
        yield Static("", id="rollout-action", classes="state")
        table: DataTable[str] = DataTable(id="rollouts", cursor_type="row")
        table.add_columns("Rollout", "Bundle", "State", "Waves", "Created", "By", "Reason")
        yield table
        yield Static("", id="rollout-gates")
        soak: DataTable[str] = DataTable(id="rollout-soak", cursor_type="none")
        soak.add_columns(*SOAK_COLUMNS)
        soak.can_focus = False  # figures only: tab goes from the rollouts to the waves
        yield soak
        waves: DataTable[str] = DataTable(id="rollout-waves", cursor_type="row")
        waves.add_columns(
            "Wave",
            "Devices",
            "State",
            "Committed",
            "Failed",
            "Rolled back",
            "Retried",
            "Approval",
            "Soak",
        )
        yield waves
        devices: DataTable[str] = DataTable(id="rollout-devices", cursor_type="row")
        devices.add_columns("Device", "Outcome", "Reason", "Tries", "Update state", "Status")
        yield devices
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(POLL_S, self._poll)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A viewer certificate cannot change a rollout: the keys are not offered.
        return not (action == "act" and fleet_app(self).read_only)

    def _poll(self) -> None:
        if self.is_current:
            self._load()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="rollouts", exit_on_error=False)
    def _load(self) -> None:
        try:
            found = fleet_app(self).client.list_rollouts()
        except AdminError as exc:
            self.post_message(FetchFailed("rollouts", exc))
            return
        self.post_message(Fetched("rollouts", found))

    # ---- showing ---------------------------------------------------------------
    def on_fetched(self, msg: Fetched) -> None:
        if msg.what == "rollout-action":
            req, r = msg.value
            self._said(f"{req.action} {r.id}: done; the rollout is {r.state}. {r.reason}".strip())
            self.rollouts[r.id] = r
            self._show_selected()
            self._load()
            return
        if msg.what != "rollouts":
            return
        self.rollouts = {r.id: r for r in msg.value}
        table = self.query_one("#rollouts", DataTable)
        _refill(table, [(r.id, rollout_row(r)) for r in msg.value])
        n = len(self.rollouts)
        active = sum(1 for r in msg.value if r.state in ("pending", "running", "paused"))
        self._say(f"{n} rollout(s), {active} active" if n else "no rollouts yet")
        self._show_selected()

    def _say(self, text: str, bad: bool = False, where: str = "#rollouts-state") -> None:
        state = self.query_one(where, Static)
        state.update(text)
        state.set_class(bad, "-bad")

    def _said(self, text: str, bad: bool = False) -> None:
        """The last action's result (or the plane's refusal), until the next action."""
        self._say(text, bad, "#rollout-action")

    def on_fetch_failed(self, msg: FetchFailed) -> None:
        if msg.what == "rollout-action":
            self._said(f"Refused by the plane: {msg.error}", bad=True)
            self.notify(str(msg.error), title="Rollout action failed", severity="error")
            return
        if msg.what != "rollouts":
            return
        if msg.error.not_available:
            code = msg.error.code.name if msg.error.code else "error"
            self._say(f"Rollouts are not available on this plane ({code}).", bad=True)
        else:
            self._say(f"Loading rollouts failed: {msg.error}", bad=True)

    def selected(self) -> admin_pb2.Rollout | None:
        key = _row_key(self.query_one("#rollouts", DataTable))
        return self.rollouts.get(key) if key is not None else None

    def _wave_index(self) -> int | None:
        key = _row_key(self.query_one("#rollout-waves", DataTable))
        return int(key) if key is not None else None

    def _show_selected(self) -> None:
        r = self.selected()
        waves = self.query_one("#rollout-waves", DataTable)
        if r is None:
            self.query_one("#rollout-gates", Static).update("")
            self.query_one("#rollout-soak", DataTable).display = False
            waves.clear()
            self.query_one("#rollout-devices", DataTable).clear()
            return
        if self._shown_id != r.id:
            waves.clear()  # a different rollout: start at its current wave
            self._shown_id = r.id
            _refill(waves, [(str(w.index), wave_row(w)) for w in r.waves])
            current = next(
                (i for i, w in enumerate(r.waves) if w.state not in ("succeeded", "overridden")),
                0,
            )
            if waves.row_count:
                waves.move_cursor(row=min(current, waves.row_count - 1), animate=False)
        else:
            _refill(waves, [(str(w.index), wave_row(w)) for w in r.waves])
        self._show_wave(r)

    def _show_wave(self, r: admin_pb2.Rollout) -> None:
        index = self._wave_index()
        wave = r.waves[index] if index is not None and index < len(r.waves) else None
        self.query_one("#rollout-gates", Static).update("\n".join(gate_lines(r, wave)))
        soaked = soak_wave(r, index)
        soak = self.query_one("#rollout-soak", DataTable)
        soak.clear()
        for cells in soak_rows(soaked) if soaked is not None else []:
            soak.add_row(*cells)
        soak.display = soak.row_count > 0
        devices = self.query_one("#rollout-devices", DataTable)
        rows = device_rows(wave, fleet_app(self).store.get) if wave is not None else []
        _refill(devices, [(row[0], row) for row in rows])

    def fleet_changed(self) -> None:
        """The fleet watch brought changes: show the robots' live states soon (at most
        twice a second, however many batches arrive)."""
        if self._live_pending:
            return
        self._live_pending = True

        def show() -> None:
            self._live_pending = False
            r = self.selected()
            if r is not None and self.is_current:
                self._show_wave(r)

        self.set_timer(LIVE_S, show)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "rollouts":
            self._show_selected()
        elif event.data_table.id == "rollout-waves":
            r = self.selected()
            if r is not None:
                self._show_wave(r)

    # ---- actions ---------------------------------------------------------------
    def action_act(self, action: str) -> None:
        r = self.selected()
        if r is None:
            self.notify("No rollout selected.", severity="warning")
            return
        wave = wave_to_approve(r, self._wave_index()) if action == "approve" else None
        self.app.push_screen(ConfirmRolloutScreen(action, r, wave), self._confirmed)

    def _confirmed(self, req: ActionRequest | None) -> None:
        if req is None:
            self.notify("Cancelled; nothing was sent.")
            return
        self._said(f"{req.action} {req.rollout_id}: sent…")
        self._act(req)

    @work(thread=True, group="rollout-action", exit_on_error=False)
    def _act(self, req: ActionRequest) -> None:
        try:
            r = fleet_app(self).client.rollout_action(
                req.action, req.rollout_id, wave=req.wave, rollback=req.rollback
            )
        except AdminError as exc:
            self.post_message(FetchFailed("rollout-action", exc))
            return
        self.post_message(Fetched("rollout-action", (req, r)))


class ConfirmRolloutScreen(ModalScreen[ActionRequest | None]):
    """What the action will do; the button is enabled once the rollout id is typed back."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, action: str, rollout: admin_pb2.Rollout, wave: int | None) -> None:
        super().__init__()
        self.action_name = action
        self.rollout = rollout
        self.wave = wave

    def request(self) -> ActionRequest:
        rollback = (
            self.action_name == "abort" and self.query_one("#confirm-rollback", Checkbox).value
        )
        return ActionRequest(self.action_name, self.rollout.id, self.wave, rollback)

    def compose(self) -> ComposeResult:
        r = self.rollout
        with Vertical(id="confirm-box"):
            yield Label(
                f"{self.action_name.capitalize()} rollout {r.id} "
                f"({r.bundle.name} {r.bundle.version}, {r.state})",
                id="confirm-title",
            )
            yield Static("", id="confirm-what")
            if self.action_name == "abort":
                yield Checkbox(
                    "roll back: devices already updated get their previous bundle",
                    value=True,
                    id="confirm-rollback",
                )
            yield Label(f"Type the rollout id ({r.id}) to confirm:")
            yield Input(placeholder=r.id, id="confirm-id")
            with Horizontal(id="confirm-buttons"):
                yield Button("Cancel", id="cancel", variant="default")
                yield Button(self.action_name.capitalize(), id="confirm", variant="error")

    def on_mount(self) -> None:
        self._update()
        self.query_one("#confirm-id", Input).focus()

    def _update(self) -> None:
        self.query_one("#confirm-what", Static).update(self.request().describe())
        typed = self.query_one("#confirm-id", Input).value.strip()
        self.query_one("#confirm", Button).disabled = typed != self.rollout.id

    def on_input_changed(self, event: Input.Changed) -> None:
        self._update()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._update()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not self.query_one("#confirm", Button).disabled:
            self.dismiss(self.request())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm" and not event.button.disabled:
            self.dismiss(self.request())
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
