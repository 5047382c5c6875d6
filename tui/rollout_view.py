"""What the rollouts screen shows of a rollout, as plain text (no Textual here).

Everything comes from the plane's `Rollout` message, exactly what `edgeflux rollout get`
prints: gates and their figures, waves, and each device's outcome or retry; the live
update state of a device comes from the console's fleet store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from protos import admin_pb2
from tui.rows import DeviceRow

__all__ = [
    "ACTIONS",
    "ActionRequest",
    "approval_text",
    "device_rows",
    "gate_lines",
    "rollout_row",
    "soak_rows",
    "soak_short",
    "soak_wave",
    "wave_row",
    "wave_to_approve",
]

# The operator's actions, with what each one does (shown before the id is typed back).
ACTIONS = {
    "approve": "Approve {wave}: its devices are pointed at the bundle.",
    "pause": "Pause: no further wave goes out until resumed.",
    "resume": "Resume: the rollout goes on; a wave paused on its threshold or soak is accepted.",
    "abort": "Abort: no further wave goes out.",
}
DONE_WAVES = ("succeeded", "overridden")


@dataclass(frozen=True)
class ActionRequest:
    """A confirmed action: the rollout id typed back, the wave (approve), rollback (abort)."""

    action: str
    rollout_id: str
    wave: int | None = None
    rollback: bool = False

    def describe(self) -> str:
        wave = "the next wave waiting" if self.wave is None else f"wave {self.wave}"
        text = ACTIONS[self.action].format(wave=wave)
        if self.action == "abort" and self.rollback:
            text += " Devices already updated get their previous bundle back."
        return text


def _clock(ts: object) -> str:
    seconds = getattr(ts, "seconds", 0)
    if not seconds:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def rollout_row(r: admin_pb2.Rollout) -> tuple[str, ...]:
    done = sum(1 for w in r.waves if w.state in DONE_WAVES)
    return (
        r.id,
        f"{r.bundle.name} {r.bundle.version}",
        r.state,
        f"{done}/{len(r.waves)}",
        _clock(r.created_at),
        r.created_by.removeprefix("operator:"),
        r.reason,
    )


def approval_text(w: admin_pb2.RolloutWave) -> str:
    if w.approved_by:
        return f"approved by {w.approved_by.removeprefix('operator:')}"
    if w.approval_required:
        return "waits for approval"
    return "—"


def soak_short(text: str, verdict: str = "") -> str:
    """The soak column: the verdict only ("soak passed: …" -> "passed")."""
    if verdict:
        return verdict
    if not text:
        return "—"
    head = text.split(":", 1)[0] if text.startswith("soak ") else text
    return head.removeprefix("soak ")


def wave_devices(w: admin_pb2.RolloutWave) -> str:
    """The wave's device count, with those that joined it and those skipped."""
    extra = [f"+{len(w.joined)} joined"] if w.joined else []
    extra += [f"{len(w.held)} held"] if w.held else []
    extra += [f"{len(w.skipped)} skipped"] if w.skipped else []
    return f"{len(w.device_ids)}" + (f" ({', '.join(extra)})" if extra else "")


def wave_row(w: admin_pb2.RolloutWave) -> tuple[str, ...]:
    return (
        str(w.index),
        wave_devices(w),
        w.state,
        str(w.committed),
        str(w.failed),
        str(w.rolled_back),
        str(len(w.retries)),
        approval_text(w),
        soak_short(w.soak, w.soak_verdict),
    )


def gate_lines(r: admin_pb2.Rollout, wave: admin_pb2.RolloutWave | None = None) -> list[str]:
    """The rollout's gates with their figures, then the highlighted wave's own gates."""
    b = r.bundle
    lines = [f"{r.id}: {b.name} {b.version} (sequence {b.sequence}) — {r.state}"]
    if r.reason:
        lines.append(f"  {r.reason}")
    if r.allow_unattested:
        lines.append(f"attestation: overridden (--allow-unattested by {r.unattested_override_by})")
    lines.append(f"attestation: {r.attestation or '—'}")
    abort = "no abort threshold"
    if r.HasField("abort_threshold"):
        abort = (
            f"abort threshold {r.abort_threshold:g} of the dispatched robots failed or regressed"
        )
        if r.abort_min_robots > 1:
            abort += f", once {r.abort_min_robots} were dispatched"
    gates = [
        f"soak {r.soak_s:g} s after each wave but the last" if r.soak_s > 0 else "no soak",
        abort,
        f"up to {r.max_tries} tries per device" if r.max_tries > 1 else "no retries",
        (
            f"shadow divergence enforced at {r.max_action_divergence:g}"
            if r.HasField("max_action_divergence")
            else "shadow divergence reported"
        ),
    ]
    if r.approval_url:
        gates.append(f"external approval check {r.approval_url}")
    if r.offline_policy:
        gates.append(f"offline robots: {r.offline_policy}")
    if r.max_held_s > 0:
        gates.append(f"held robots skipped after {r.max_held_s:g} s")
    lines.append(" · ".join(gates))
    if r.soak_s > 0 and r.soak_thresholds:
        lines.append(f"soak thresholds: {r.soak_thresholds}")
    if r.abort:
        lines.append(f"ABORT threshold crossed: {r.abort}")
    if wave is not None:
        lines.append(f"wave {wave.index} ({wave.state}): {approval_text(wave)}")
        if wave.approved_by:
            lines.append(f"  approved at {_clock(wave.approved_at)} UTC")
        if wave.approval_check:
            lines.append(f"  external check: {wave.approval_check}")
        if wave.joined:
            lines.append(f"  joined while the rollout ran: {', '.join(wave.joined[:10])}")
        for o in wave.held[:10]:
            why = ": ".join(x for x in (o.reason_code, o.detail) if x)
            lines.append(f"  held {o.device_id}: {why}".rstrip(": "))
        for o in wave.skipped[:10]:
            why = ": ".join(x for x in (o.reason_code, o.detail) if x)
            lines.append(f"  skipped {o.device_id}: {why}".rstrip(": "))
        if wave.soak:
            lines.append(f"  after it: {wave.soak}")
        if 0 < wave.index <= len(r.waves) and r.waves[wave.index - 1].soak:
            lines.append(f"  before it, wave {wave.index - 1}'s {r.waves[wave.index - 1].soak}")
    return lines


SOAK_COLUMNS = (
    "Soak figures",
    "Robots",
    "Reporting",
    "Miss rate",
    "Interv./min",
    "Loop p99 ms",
    "Errors/robot",
    "Divergence",
)


def soak_wave(r: admin_pb2.Rollout, highlighted: int | None) -> admin_pb2.RolloutWave | None:
    """The wave whose soak figures to show: the highlighted one's own, else those of the
    wave before it (the soak that gates it); None when neither has figures."""
    if highlighted is None or highlighted >= len(r.waves):
        return None
    for index in (highlighted, highlighted - 1):
        if index >= 0 and r.waves[index].soak_figures:
            return r.waves[index]
    return None


def soak_rows(w: admin_pb2.RolloutWave) -> list[tuple[str, ...]]:
    """One row per group the soak decision compared (the wave, before, not yet updated)."""
    return [
        (
            f"wave {w.index}: {f.group}",
            str(f.devices),
            str(f.reporting),
            f"{f.miss_rate:.4f}",
            f"{f.interventions_per_min:.2f}",
            f"{f.latency_p99_ms:.2f}",
            f"{f.errors_per_robot:.2f}",
            f"{f.divergence:.4g}" if f.HasField("divergence") else "—",
        )
        for f in w.soak_figures
    ]


def wave_to_approve(r: admin_pb2.Rollout, highlighted: int | None) -> int | None:
    """The highlighted wave when it waits for approval; else None (the plane's next one)."""
    if highlighted is None or highlighted >= len(r.waves):
        return None
    w = r.waves[highlighted]
    return w.index if w.approval_required and not w.approved_by else None


def device_rows(
    w: admin_pb2.RolloutWave, live: Callable[[str], DeviceRow | None]
) -> list[tuple[str, ...]]:
    """One row per device of the wave: its outcome in the rollout, retries, live state."""
    outcomes = {o.device_id: o for o in w.held}
    outcomes.update({o.device_id: o for o in w.skipped})
    outcomes.update({o.device_id: o for o in w.outcomes})
    joined = set(w.joined)
    retries = {t.device_id: t for t in w.retries}
    rows: list[tuple[str, ...]] = []
    for d in w.device_ids:
        o = outcomes.get(d)
        t = retries.get(d)
        row = live(d)
        if t is None:
            tried = "—"
        else:
            nxt = (
                f", next at {t.next_at.ToDatetime().strftime('%H:%M:%S')}"
                if t.HasField("next_at")
                else ""
            )
            tried = f"{t.tries} ({t.outcome} {t.reason_code}{nxt})".replace(" )", ")")
        if row is None:
            state, online = "—", "?"
        else:
            reason = f" ({row.update_reason})" if row.update_reason else ""
            state = f"{row.update_state or '—'}{reason}"
            online = "● online" if row.online else "○ offline"
        why = ": ".join(x for x in (o.reason_code, o.detail) if x) if o is not None else ""
        if d in joined:
            why = "; ".join(x for x in ("joined while the rollout ran", why) if x)
        rows.append((d, o.outcome if o is not None else "—", why, tried, state, online))
    return rows
