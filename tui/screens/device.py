"""One device: details, telemetry sparklines, update history, bundle and its attestation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Sparkline, Static

from protos import admin_pb2
from protos.lifecycle import Reason, UpdateState
from tui.client import AdminError
from tui.messages import Fetched, FetchFailed
from tui.rows import bundle_label, temperature_text
from tui.screens._chrome import ConnectionBar, fleet_app
from tui.verify import verify_envelope


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts > 0 else "—"


def _held_line(state: str, reason: str) -> str:
    """For an update waiting before its switch: what it waits for, on its own line."""
    if state != UpdateState.HELD:
        return ""
    waits = {
        Reason.UPDATE_LOCKED: "until the robot's update locks are released",
        Reason.OUTSIDE_WINDOW: "for the maintenance window to open",
    }.get(Reason.parse(reason, Reason.OK), "")
    return f"[yellow]held     candidate staged; the switch waits {waits}".rstrip() + "[/yellow]\n"


class DeviceScreen(Screen[None]):
    """Everything about one robot. History comes from the plane, else from this session."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id
        self.history_source = "this session"

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        with VerticalScroll(id="device-body"):
            yield Static("", id="device-details")
            with Horizontal(id="sparks"):
                for key, title in (
                    ("p99", "loop p99 ms"),
                    ("miss", "deadline misses"),
                    ("safety", "safety interventions"),
                ):
                    with Vertical(classes="spark-box"):
                        yield Label(title, id=f"spark-{key}-title", classes="spark-title")
                        yield Sparkline([], id=f"spark-{key}")
            yield Label("Update history", classes="section")
            history: DataTable[str] = DataTable(id="device-updates", cursor_type="row")
            history.add_columns("When (UTC)", "State", "Reason", "Bundle")
            yield history
            yield Label("Active bundle", classes="section")
            yield Static("", id="device-bundle")
            yield Static("", id="device-published")
        yield Footer()

    def on_mount(self) -> None:
        self._show_local()
        self.action_reload()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_reload(self) -> None:
        # read the store here, on the UI thread; the worker only talks to the plane
        row = fleet_app(self).store.get(self.device_id)
        ref = (row.bundle_name, row.bundle_version, row.policy_sha256) if row else ("", "", "")
        self._fetch(*ref)

    @work(thread=True, exclusive=True, group="device", exit_on_error=False)
    def _fetch(self, bundle_name: str, bundle_version: str, policy_sha256: str) -> None:
        app = fleet_app(self)
        try:
            self.post_message(Fetched("history", app.client.device_history(self.device_id)))
        except AdminError as exc:
            self.post_message(FetchFailed("history", exc))
        if bundle_name:
            try:
                published = [
                    b
                    for b in app.client.list_bundles()
                    if (b.ref.name, b.ref.version) == (bundle_name, bundle_version)
                ]
            except AdminError:
                published = []
            self.post_message(Fetched("published", published[0] if published else None))
        if not policy_sha256:
            return
        try:
            att = app.client.get_attestation(policy_sha256)
        except AdminError as exc:
            self.post_message(FetchFailed("attestation", exc))
            return
        verdict = verify_envelope(att.envelope.dsse_json, app.trusted_keys)
        self.post_message(Fetched("attestation", (att, verdict)))

    # ---- rendering -----------------------------------------------------------
    def _show_local(self) -> None:
        store = fleet_app(self).store
        row = store.get(self.device_id)
        details = self.query_one("#device-details", Static)
        if row is None:
            details.update(f"[b]{self.device_id}[/b]\nnot in the fleet (removed or filtered out)")
            return
        labels = "  ".join(f"{k}={v}" for k, v in row.labels) or "—"
        status = "online" if row.online else f"offline since {_clock(row.last_seen)}"
        details.update(
            f"[b]{row.id}[/b]   {status}{'   [red]REVOKED[/red]' if row.revoked else ''}\n"
            f"labels   {labels}\n"
            f"runtime  {row.runtime_version or '—'}\n"
            f"update   {row.update_state or '—'}"
            f"{'  reason ' + row.update_reason if row.update_reason else ''}"
            f"{'  ' + row.update_detail if row.update_detail else ''}\n"
            f"{_held_line(row.update_state, row.update_reason)}"
            f"health   p99 {row.loop_p99_ms:.2f} ms · misses {100 * row.deadline_miss_rate:.2f}%"
            f" · safety {row.safety_interventions} · cpu {row.cpu_percent:.0f}%"
            f" · {temperature_text(row.temperature_c, ' °C')}"
        )
        hist = list(store.history.get(self.device_id, ()))
        self._sparks(
            [p.loop_p99_ms for p in hist],
            [p.deadline_miss_rate for p in hist],
            [float(p.safety_interventions) for p in hist],
        )
        ups = [
            (u.at, u.state, u.reason, u.bundle, "") for u in store.updates.get(self.device_id, ())
        ]
        self._updates(ups)
        self.query_one("#device-bundle", Static).update(
            f"{row.bundle_name or '(none)'} {row.bundle_version}  sequence {row.bundle_sequence}\n"
            f"policy.onnx sha256  {row.policy_sha256 or '—'}\n"
            "parity attestation  (checking…)"
            if row.policy_sha256
            else "no active bundle"
        )

    def _sparks(self, p99: list[float], miss: list[float], safety: list[float]) -> None:
        for key, data, fmt in (
            ("p99", p99, "{:.2f} ms"),
            ("miss", [100 * v for v in miss], "{:.2f}%"),
            ("safety", safety, "{:.0f}"),
        ):
            self.query_one(f"#spark-{key}", Sparkline).data = data
            last = fmt.format(data[-1]) if data else "no data"
            title = self.query_one(f"#spark-{key}-title", Label)
            base = {"p99": "loop p99", "miss": "deadline misses", "safety": "safety interventions"}
            title.update(f"{base[key]} · {last} · {len(data)} pts ({self.history_source})")

    def _updates(self, rows: list[tuple[float, str, str, str, str]]) -> None:
        """History rows: when, state, reason (code and the robot's detail), bundle."""
        t = self.query_one("#device-updates", DataTable)
        t.clear()
        for at, state, reason, bundle, detail in reversed(rows):
            why = f"{reason}: {detail}" if reason and reason != Reason.OK and detail else reason
            t.add_row(_clock(at), state, why or "—", bundle or "—")

    def on_fetched(self, msg: Fetched) -> None:
        if msg.what == "history":
            h: admin_pb2.DeviceHistory = msg.value
            self.history_source = "control plane"

            def ts(entry: admin_pb2.UpdateHistoryEntry) -> float:
                return float(entry.at.seconds + entry.at.nanos / 1e9)

            self._sparks(
                [s.value for s in h.loop_p99_ms],
                [s.value for s in h.deadline_miss_rate],
                [s.value for s in h.safety_interventions],
            )
            self._updates(
                [
                    (
                        ts(u),
                        u.state,
                        u.reason,
                        bundle_label(u.bundle.name, u.bundle.version),
                        u.detail,
                    )
                    for u in h.updates
                ]
            )
        elif msg.what == "published":
            b = msg.value
            text = (
                "not in the plane's published bundles"
                if b is None
                else f"published {_clock(b.published_at.seconds)} · signer key "
                f"{b.signer_key_id[:16] or '—'} · {b.size_bytes / 1024:.0f} KiB · "
                f"target {b.target_path or '—'}"
            )
            self.query_one("#device-published", Static).update(text)
        elif msg.what == "attestation":
            att, verification = msg.value
            row = fleet_app(self).store.get(self.device_id)
            sig = "[green]✔ " if verification.ok else "[red]✘ "
            self.query_one("#device-bundle", Static).update(
                f"{att.bundle.name or (row.bundle_name if row else '')} "
                f"{att.bundle.version or (row.bundle_version if row else '')}  "
                f"sequence {row.bundle_sequence if row else att.bundle.sequence}\n"
                f"policy.onnx sha256  {att.subject_sha256}\n"
                f"parity attestation  [b]{att.verdict}[/b]   {sig}{verification.detail}[/]"
            )

    def on_fetch_failed(self, msg: FetchFailed) -> None:
        if msg.what == "attestation":
            row = fleet_app(self).store.get(self.device_id)
            why = "not available on this plane" if msg.error.not_available else str(msg.error)
            if msg.error.code is not None and msg.error.code.name == "NOT_FOUND":
                why = "none published for this policy"
            self.query_one("#device-bundle", Static).update(
                f"{row.bundle_name if row else ''} {row.bundle_version if row else ''}  "
                f"sequence {row.bundle_sequence if row else 0}\n"
                f"policy.onnx sha256  {row.policy_sha256 if row else '—'}\n"
                f"parity attestation  {why}"
            )
        # history unavailable: keep what this session saw on the stream
