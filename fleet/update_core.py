"""The update state machine's pure core: the path, the shadow verdict, the persisted record
and what a restarted agent does with it. No I/O beyond the record's own file.

The words — :class:`~protos.lifecycle.UpdateState`, :class:`~protos.lifecycle.Reason` —
are the lifecycle vocabulary every layer shares. A record's state names the step in
progress; the step's effect runs while that state is on disk (see :mod:`fleet.update`).

Crash recovery (:func:`recovery_plan`): before ``SWITCHING`` nothing has reached the
actuators, so the update restarts from a fresh TUF refresh (every earlier step is
idempotent and re-checks). From ``SWITCHING`` or ``HEALTH_WINDOW`` the candidate may
have driven the robot and the runtime's health verdict is lost with the process, so it
is rolled back — it never gets committed on evidence nobody saw. ``COMMITTING`` means
the commit was decided; it is re-issued (commit is idempotent). The anti-rollback
counter lives in the runtime and advances only inside ``commit``.

The runtime is the one judge of a candidate's health (its health window rolls back by
itself); the agent judges the shadow run, whose limits come with the update.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protos.lifecycle import Reason, UpdateState
from runtime.atomicio import atomic_write_text
from runtime.maintenance_window import MaintenanceWindow

__all__ = [
    "ACTUATED",
    "PATH",
    "TERMINAL",
    "RecoveryAction",
    "ShadowResult",
    "ShadowThresholds",
    "StagedBundle",
    "StepDeadlines",
    "TargetInfo",
    "UpdateError",
    "UpdateRecord",
    "UpdateStateError",
    "UpdateStateFile",
    "judge_shadow",
    "plain",
    "recovery_plan",
    "shadow_summary",
]

S = UpdateState

#: The steps in order; each one's effect runs while its state is persisted.
PATH: tuple[UpdateState, ...] = (
    S.REFRESHING,
    S.DOWNLOADING,
    S.STAGING,
    S.ATTESTING,
    S.SHADOWING,
    S.SWITCHING,
    S.HEALTH_WINDOW,
    S.COMMITTING,
)
TERMINAL = frozenset({S.IDLE, S.COMMITTED, S.FAILED, S.ROLLED_BACK})
#: From here on the candidate may have driven the actuators.
ACTUATED = frozenset({S.SWITCHING, S.HEALTH_WINDOW, S.COMMITTING})
#: A candidate sits in the runtime's inactive slot: a failure discards it.
HOLDS_CANDIDATE = frozenset({S.STAGING, S.ATTESTING, S.SHADOWING, S.HELD})

# Records written by earlier agents (no "staged" key) named each state after the step
# before it; their COMMITTED was persisted before the commit ran.
_LEGACY_STATES = {
    **dict.fromkeys(
        ("HINTED", "REFRESHED", "DOWNLOADED", "VERIFIED", "ATTESTED", "STAGED", "WARMED"),
        S.REFRESHING,
    ),
    "SHADOW": S.REFRESHING,
    "SWITCHED": S.SWITCHING,
    "COMMITTED": S.COMMITTING,
}
_LEGACY_REASONS = {
    "WARM_FAILED": Reason.STAGE_FAILED,
    "HEALTH_DEADLINE_MISSES": Reason.HEALTH_WINDOW_FAILED,
    "HEALTH_INTERVENTIONS": Reason.HEALTH_WINDOW_FAILED,
}


class UpdateError(Exception):
    """An update step failed; `reason` is the code reported in the event."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class UpdateStateError(ValueError):
    """The persisted update state file is unreadable; the message names the file."""


@dataclass(frozen=True)
class TargetInfo:
    """A bundle the TUF refresh resolved: the target path, its signed length and hash."""

    name: str
    version: str
    sequence: int
    target_path: str
    length: int
    sha256: str
    max_action_divergence: float | None = None
    """The rollout's action-divergence limit for the shadow check (None: not set)."""
    windows: str = ""
    """The maintenance windows the switch waits for, as the signed desired state gave
    them (a JSON list; empty: none)."""

    def maintenance_windows(self) -> tuple[MaintenanceWindow, ...]:
        """The windows, parsed (they were validated when the desired state was)."""
        if not self.windows:
            return ()
        return tuple(MaintenanceWindow.model_validate(w) for w in json.loads(self.windows))


@dataclass(frozen=True)
class StagedBundle:
    """What the runtime verified of the bundle it staged — the one verification of an
    update, passed on to the attestation check and the record."""

    name: str
    version: str
    sequence: int
    policy_sha256: str
    root_digest: str
    slot: str


@dataclass(frozen=True)
class ShadowResult:
    """What the runtime measured while the candidate ran in shadow (actions not applied)."""

    ticks: int
    divergence_max: float
    nan_rate: float
    latency_p99_ms: float
    envelope_violations: int


@dataclass(frozen=True)
class ShadowThresholds:
    divergence_max: float | None = None
    """Largest allowed |candidate − active| action difference, in action units, where
    the rollout sets none; None: measured and reported, not enforced."""
    nan_rate_max: float = 0.0
    latency_p99_ms_max: float = 5.0
    envelope_violations_max: int = 0
    min_ticks: int = 1


@dataclass(frozen=True)
class StepDeadlines:
    """Seconds each step may take before the update fails (or rolls back)."""

    refresh_s: float = 60.0
    download_s: float = 600.0
    stage_s: float = 120.0
    attest_s: float = 60.0
    shadow_s: float = 120.0
    switch_s: float = 600.0
    """Includes waiting for the robot to allow a switch."""
    health_s: float = 120.0
    commit_s: float = 30.0
    hold_s: float = 15 * 24 * 3600.0
    """How long the switch may wait for locks and windows (HELD) before the update fails."""

    def for_state(self, state: UpdateState) -> float:
        return {
            S.REFRESHING: self.refresh_s,
            S.DOWNLOADING: self.download_s,
            S.STAGING: self.stage_s,
            S.ATTESTING: self.attest_s,
            S.SHADOWING: self.shadow_s,
            S.SWITCHING: self.switch_s,
            S.HEALTH_WINDOW: self.health_s,
            S.COMMITTING: self.commit_s,
            S.HELD: self.hold_s,
        }.get(state, 60.0)


def _divergence_limit(t: ShadowThresholds, rollout_limit: float | None) -> float | None:
    return rollout_limit if rollout_limit is not None else t.divergence_max


def judge_shadow(
    result: ShadowResult, t: ShadowThresholds, divergence_limit: float | None = None
) -> tuple[Reason, str] | None:
    """None when the candidate may be actuated, else why not (NaN first: it poisons max).

    The candidate's own health on live observations is always judged (NaN, latency,
    envelope interventions). Its divergence from the active policy is judged only
    against a limit: the rollout's (`divergence_limit`), else the robot's; it is
    named in every verdict either way.
    """
    limit = _divergence_limit(t, divergence_limit)
    div = f"max action divergence {result.divergence_max:.4g}"
    div += f" (limit {limit:.4g})" if limit is not None else " (not enforced)"
    if result.ticks < t.min_ticks:
        return Reason.SHADOW_FAILED, f"shadow ran {result.ticks} ticks, need {t.min_ticks}"
    if result.nan_rate > t.nan_rate_max or result.divergence_max != result.divergence_max:
        return Reason.SHADOW_NAN, f"NaN rate {result.nan_rate:.4f} > {t.nan_rate_max}; {div}"
    if limit is not None and result.divergence_max > limit:
        return (
            Reason.SHADOW_DIVERGENCE,
            f"max action divergence {result.divergence_max:.4g} > {limit:.4g}",
        )
    if result.latency_p99_ms > t.latency_p99_ms_max:
        return (
            Reason.SHADOW_LATENCY,
            f"p99 latency {result.latency_p99_ms:.3f} ms > {t.latency_p99_ms_max} ms; {div}",
        )
    if result.envelope_violations > t.envelope_violations_max:
        return (
            Reason.SHADOW_ENVELOPE,
            f"{result.envelope_violations} envelope violations > "
            f"{t.envelope_violations_max}; {div}",
        )
    return None


def shadow_summary(
    result: ShadowResult, t: ShadowThresholds, divergence_limit: float | None = None
) -> str:
    """The evidence of a shadow run that passed, as it travels with the next event."""
    limit = _divergence_limit(t, divergence_limit)
    enforced = f"limit {limit:.4g}" if limit is not None else "not enforced"
    return (
        f"shadow {result.ticks} ticks: max divergence {result.divergence_max:.4g} "
        f"({enforced}), NaN rate {result.nan_rate:.4g}, p99 {result.latency_p99_ms:.3f} ms, "
        f"envelope violations {result.envelope_violations}"
    )


class UpdateRecord(BaseModel):
    """The one persisted update (``<agent state>/update.json``)."""

    model_config = ConfigDict(extra="ignore")

    state: UpdateState = S.IDLE
    reason: Reason = Reason.OK
    detail: str = ""
    bundle_name: str = ""
    hint_sequence: int = 0
    generation: int = 0
    rollout_id: str = ""
    target: dict[str, str | int | float] = Field(default_factory=dict)
    download_path: str = ""
    staged: dict[str, str | int | float] = Field(default_factory=dict)
    entered_at: float = 0.0
    attempts: int = 0
    last_refresh_at: float = 0.0

    def target_info(self) -> TargetInfo:
        t = self.target
        return TargetInfo(
            name=str(t["name"]),
            version=str(t["version"]),
            sequence=int(t["sequence"]),
            target_path=str(t["target_path"]),
            length=int(t["length"]),
            sha256=str(t["sha256"]),
            max_action_divergence=_limit(t.get("max_action_divergence")),
            windows=str(t.get("windows", "")),
        )

    def staged_bundle(self) -> StagedBundle:
        s = self.staged
        return StagedBundle(
            name=str(s["name"]),
            version=str(s["version"]),
            sequence=int(s["sequence"]),
            policy_sha256=str(s["policy_sha256"]),
            root_digest=str(s["root_digest"]),
            slot=str(s["slot"]),
        )


def plain(value: TargetInfo | StagedBundle) -> dict[str, str | int | float]:
    """A dataclass of str/int/float fields as the record stores it (unset ones left out)."""
    return {k: v for k, v in asdict(value).items() if v is not None}


def _limit(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class UpdateStateFile:
    """Load/save :class:`UpdateRecord` atomically; a corrupt file is an error naming it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return UpdateRecord()
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and "staged" not in data:
                data = _upgrade(data)
            return UpdateRecord.model_validate(data)
        except (ValueError, ValidationError) as exc:
            raise UpdateStateError(
                f"update state {self.path} is not a valid update record ({exc}); "
                "move it aside to start from IDLE"
            ) from exc

    def save(self, record: UpdateRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, record.model_dump_json(indent=2) + "\n")


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    state, reason = data.get("state"), data.get("reason")
    if isinstance(state, str) and state in _LEGACY_STATES:
        data = {**data, "state": _LEGACY_STATES[state].value}
    if isinstance(reason, str) and reason in _LEGACY_REASONS:
        data = {**data, "reason": _LEGACY_REASONS[reason].value}
    return data


class RecoveryAction(enum.StrEnum):
    NOTHING = "NOTHING"
    RESTART = "RESTART"
    ROLLBACK = "ROLLBACK"
    COMMIT = "COMMIT"


def recovery_plan(state: UpdateState) -> RecoveryAction:
    """What a restarted agent does with an update it finds persisted in `state`."""
    if state in TERMINAL:
        return RecoveryAction.NOTHING
    if state is S.COMMITTING:
        return RecoveryAction.COMMIT
    if state in ACTUATED:
        return RecoveryAction.ROLLBACK
    return RecoveryAction.RESTART
