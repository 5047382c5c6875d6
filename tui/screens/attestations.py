"""Parity attestations: the list, and a readable report of the highlighted one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from protos import attestation_pb2
from tui.client import AdminError
from tui.messages import Fetched, FetchFailed
from tui.screens._chrome import ConnectionBar, fleet_app
from tui.verify import Verification, verify_envelope


def _when(ts: Any) -> str:
    if not ts.seconds:
        return "—"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M")


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)[:80]
    return str(v)


def _records_table(title: str, records: list[dict[str, Any]]) -> Table:
    cols: list[str] = []
    for r in records:
        cols += [k for k in r if k not in cols]
    table = Table(title=title, title_justify="left", expand=False)
    for c in cols:
        table.add_column(c)
    for r in records:
        table.add_row(*(_scalar(r.get(c, "")) for c in cols))
    return table


def _as_records(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **v} for k, v in value.items()]
    return None


def render_report(att: attestation_pb2.Attestation, check: Verification) -> RenderableType:
    """The attestation as an operator reads it: signature, verdict, subjects, tasks, gates."""
    parts: list[RenderableType] = []
    sig = Text("✔ " if check.ok else "✘ ", style="bold green" if check.ok else "bold red")
    sig.append(check.detail)
    parts.append(Text(f"Attestation for {att.bundle.name} {att.bundle.version}", style="bold"))
    parts.append(sig)
    parts.append(Text(f"verdict (plane): {att.verdict or '—'}"))
    parts.append(Text(f"issued {_when(att.issued_at)} · expires {_when(att.expires_at)}"))
    st = check.statement
    if st is None:
        parts.append(Text("Statement not shown: it is only read after its signature verifies."))
        return Group(*parts)
    subjects = st.get("subject", [])
    if isinstance(subjects, list):
        t = Table(title="Subjects", title_justify="left")
        t.add_column("name")
        t.add_column("digest")
        for s in subjects:
            if isinstance(s, dict):
                digest = s.get("digest", {})
                text = ", ".join(f"{k}:{v}" for k, v in digest.items()) if digest else ""
                t.add_row(str(s.get("name", "")), text)
        parts.append(t)
    parts.append(Text(f"predicate type: {st.get('predicateType', '—')}"))
    predicate = st.get("predicate", {})
    if not isinstance(predicate, dict):
        parts.append(Text(f"predicate: {_scalar(predicate)}"))
        return Group(*parts)
    verdict = predicate.get("verdict")
    if verdict is not None:
        ok = str(verdict).lower() == "attested"
        parts.append(
            Text(f"verdict (signed): {verdict}", style="bold green" if ok else "bold yellow")
        )
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="dim")
    lines.add_column()
    for key, value in predicate.items():
        if key == "verdict" or _as_records(value) is not None:
            continue
        lines.add_row(key, _scalar(value))
    parts.append(lines)
    for key, value in predicate.items():
        records = _as_records(value)
        if records is not None:
            parts.append(_records_table(key, records))
    return Group(*parts)


class AttestationsScreen(Screen[None]):
    """List on top, the highlighted attestation's report below (verified locally)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reload", "Reload")]

    def __init__(self) -> None:
        super().__init__()
        self.attestations: list[attestation_pb2.Attestation] = []

    def compose(self) -> ComposeResult:
        yield ConnectionBar(id="conn")
        yield Static("loading attestations…", id="att-state", classes="state")
        table: DataTable[str] = DataTable(id="attestations", cursor_type="row")
        table.add_columns("Bundle", "Version", "Subject sha256", "Verdict", "Signature", "Issued")
        yield table
        with VerticalScroll(id="att-report-box"):
            yield Static("", id="att-report")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="attestations", exit_on_error=False)
    def _load(self) -> None:
        app = fleet_app(self)
        try:
            atts = app.client.list_attestations()
        except AdminError as exc:
            self.post_message(FetchFailed("attestations", exc))
            return
        checks = [verify_envelope(a.envelope.dsse_json, app.trusted_keys) for a in atts]
        self.post_message(Fetched("attestations", list(zip(atts, checks, strict=True))))

    def on_fetched(self, msg: Fetched) -> None:
        if msg.what != "attestations":
            return
        self._checks: dict[str, tuple[attestation_pb2.Attestation, Verification]] = {}
        t = self.query_one("#attestations", DataTable)
        t.clear()
        for att, check in msg.value:
            key = att.subject_sha256 or str(len(self._checks))
            self._checks[key] = (att, check)
            t.add_row(
                att.bundle.name,
                att.bundle.version,
                att.subject_sha256[:16],
                att.verdict,
                "verified" if check.ok else "NOT verified",
                _when(att.issued_at),
                key=key,
            )
        n = len(self._checks)
        self.query_one("#att-state", Static).update(
            f"{n} attestation(s); signatures checked against "
            f"{len(fleet_app(self).trusted_keys)} trusted key(s)"
            if n
            else "no attestations yet"
        )
        if n:
            self._show(0)

    def on_fetch_failed(self, msg: FetchFailed) -> None:
        if msg.what != "attestations":
            return
        state = self.query_one("#att-state", Static)
        if msg.error.not_available:
            state.update(
                "Attestations are not available on this plane "
                f"({msg.error.code.name if msg.error.code else 'error'})."
            )
        else:
            state.update(f"Loading attestations failed: {msg.error}")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "attestations":
            self._show(event.cursor_row)

    def _show(self, index: int) -> None:
        t = self.query_one("#attestations", DataTable)
        if index >= t.row_count:
            return
        key = t.coordinate_to_cell_key(Coordinate(index, 0)).row_key.value
        if key is None or key not in self._checks:
            return
        att, check = self._checks[key]
        self.query_one("#att-report", Static).update(render_report(att, check))
