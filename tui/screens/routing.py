"""Routing health: backends, budgets, recent decisions and the audit log's verification."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from protos import router_pb2
from tui.client import AdminError
from tui.messages import Fetched, FetchFailed
from tui.screens._chrome import ConnectionBar, fleet_app

POLL_S = 2.0


def _ms_clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S") if ms > 0 else "—"


class RoutingScreen(Screen[None]):
    """RouterStats, polled every couple of seconds while this screen is shown."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reload", "Reload")]

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        yield Static("loading router stats…", id="route-state", classes="state")
        with VerticalScroll(id="route-body"):
            yield Label("Backends", classes="section")
            backends: DataTable[str] = DataTable(id="route-backends", cursor_type="row")
            backends.add_columns(
                "Backend",
                "Tier",
                "Healthy",
                "In flight / limit",
                "Work u/s",
                "USD/s",
                "p95 ms",
                "Cooldown s",
            )
            yield backends
            yield Label("Budgets", classes="section")
            budgets: DataTable[str] = DataTable(id="route-budgets", cursor_type="row")
            budgets.add_columns("Scope", "Used USD", "Reserved USD", "Limit USD", "Use")
            yield budgets
            yield Label("Recent decisions", classes="section")
            decisions: DataTable[str] = DataTable(id="route-decisions", cursor_type="row")
            decisions.add_columns(
                "When", "Task", "QoS", "Outcome", "Backend", "Cost USD", "ms", "Scope", "Reason"
            )
            yield decisions
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(POLL_S, self._poll)

    def _poll(self) -> None:
        if self.is_current:
            self._load()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="routing", exit_on_error=False)
    def _load(self) -> None:
        try:
            stats = fleet_app(self).client.router_stats()
        except AdminError as exc:
            self.post_message(FetchFailed("routing", exc))
            return
        self.post_message(Fetched("routing", stats))

    def on_fetched(self, msg: Fetched) -> None:
        if msg.what != "routing":
            return
        s: router_pb2.RouterStatsResponse = msg.value
        av = s.audit_verification
        if not av.checked:
            audit = "audit log: not verified by the plane yet"
        elif av.ok:
            when = _ms_clock(av.checked_at_unix_ms)
            audit = f"audit log ✔ verified ({av.records_checked} records, {when})"
        else:
            audit = f"audit log ✘ VERIFICATION FAILED: {av.detail}"
        head = s.audit_tree_head[:16] or "—"
        self.query_one("#route-state", Static).update(
            f"{len(s.backends)} backend(s) · {s.audit_records} audit records · "
            f"head {head} · {audit}"
        )
        self.query_one("#route-state", Static).set_class(av.checked and not av.ok, "-bad")
        self._fill(
            "#route-backends",
            [
                (
                    b.name,
                    str(b.tier),
                    "yes" if b.healthy else "NO",
                    f"{b.in_flight} / {b.concurrency_limit:.1f}",
                    f"{b.work_units_per_s:.1f}",
                    f"{b.usd_per_s:.4f}",
                    f"{b.p95_latency_ms:.1f}",
                    f"{b.cooldown_remaining_s:.1f}" if b.cooldown_remaining_s > 0 else "—",
                )
                for b in s.backends
            ],
        )
        self._fill(
            "#route-budgets",
            [
                (
                    b.scope,
                    f"{b.used_usd:.4f}",
                    f"{b.reserved_usd:.4f}",
                    f"{b.limit_usd:.2f}",
                    f"{100 * (b.used_usd + b.reserved_usd) / b.limit_usd:.0f}%"
                    if b.limit_usd > 0
                    else "—",
                )
                for b in s.budgets
            ],
        )
        self._fill(
            "#route-decisions",
            [
                (
                    _ms_clock(d.at_unix_ms),
                    d.task_type,
                    router_pb2.QosClass.Name(d.qos).removeprefix("QOS_CLASS_").lower(),
                    router_pb2.RouteOutcome.Name(d.outcome).removeprefix("ROUTE_OUTCOME_").lower(),
                    d.backend or "—",
                    f"{d.cost_usd:.4f}",
                    f"{d.latency_ms:.1f}",
                    d.scope,
                    d.reason,
                )
                for d in s.recent_decisions
            ],
        )

    def _fill(self, selector: str, rows: list[tuple[str, ...]]) -> None:
        t = self.query_one(selector, DataTable)
        row = t.cursor_row
        t.clear()
        for r in rows:
            t.add_row(*r)
        if rows:
            t.move_cursor(row=min(row, len(rows) - 1), animate=False)

    def on_fetch_failed(self, msg: FetchFailed) -> None:
        if msg.what != "routing":
            return
        state = self.query_one("#route-state", Static)
        if msg.error.not_available:
            state.update(
                "Routing is not available on this plane "
                f"({msg.error.code.name if msg.error.code else 'error'}); "
                f"retrying every {POLL_S:.0f}s."
            )
        else:
            state.update(f"Router stats failed: {msg.error}")
