"""The update state machine on the robot (docs/architecture.md, "The update state machine").

``IDLE → HINTED → REFRESHED → DOWNLOADED → VERIFIED → ATTESTED → STAGED → WARMED →
SHADOW → SWITCHED → HEALTH_WINDOW → COMMITTED``, with ``FAILED(reason)`` and
``ROLLED_BACK(reason)`` exits.

The core is pure: :func:`judge_shadow`, :func:`judge_health` and :func:`recovery_plan`
decide from plain data. :class:`UpdateRunner` is the thin I/O shell: for each state it

1. persists the record (``runtime.atomicio``: temp file + fsync + rename) *before*
   acting, so a kill at any point finds on disk the step that was in progress,
2. calls the one effect that state owns (:class:`UpdateEffects`, the plug point the
   agent wires to TUF, gRPC and ``RuntimeControl``) with the step's deadline,
3. reports the transition as an event with a reason code.

Crash recovery (:func:`recovery_plan`): before ``SWITCHED`` nothing has reached the
actuators, so the update restarts from a fresh TUF refresh (every earlier step is
idempotent and re-verifies). From ``SWITCHED`` or ``HEALTH_WINDOW`` the health
evidence is lost with the process, so the candidate is rolled back — it never gets
committed on evidence nobody saw. A persisted ``COMMITTED`` means the commit was
decided; it is re-issued (commit is idempotent). The anti-rollback counter lives in
the runtime and advances only inside ``commit``.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.atomicio import atomic_write_text

__all__ = [
    "HealthReport",
    "HealthThresholds",
    "Reason",
    "RecoveryAction",
    "ShadowResult",
    "ShadowThresholds",
    "State",
    "StepDeadlines",
    "TargetInfo",
    "UpdateEffects",
    "UpdateError",
    "UpdateRecord",
    "UpdateRunner",
    "UpdateStateError",
    "UpdateStateFile",
    "judge_health",
    "judge_shadow",
    "recovery_plan",
]

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    IDLE = "IDLE"
    HINTED = "HINTED"
    REFRESHED = "REFRESHED"
    DOWNLOADED = "DOWNLOADED"
    VERIFIED = "VERIFIED"
    ATTESTED = "ATTESTED"
    STAGED = "STAGED"
    WARMED = "WARMED"
    SHADOW = "SHADOW"
    SWITCHED = "SWITCHED"
    HEALTH_WINDOW = "HEALTH_WINDOW"
    COMMITTED = "COMMITTED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"


#: The happy path, in order. Each state's effect runs while that state is persisted.
PATH: tuple[State, ...] = (
    State.HINTED,
    State.REFRESHED,
    State.DOWNLOADED,
    State.VERIFIED,
    State.ATTESTED,
    State.STAGED,
    State.WARMED,
    State.SHADOW,
    State.SWITCHED,
    State.HEALTH_WINDOW,
    State.COMMITTED,
)
TERMINAL = frozenset({State.IDLE, State.FAILED, State.ROLLED_BACK})
#: From here on the candidate may have driven the actuators.
ACTUATED = frozenset({State.SWITCHED, State.HEALTH_WINDOW})


class Reason(enum.StrEnum):
    """Reason codes carried by every transition event."""

    OK = "OK"
    HINT_IGNORED = "HINT_IGNORED"
    TUF_REFRESH_FAILED = "TUF_REFRESH_FAILED"
    TARGET_UNKNOWN = "TARGET_UNKNOWN"
    NOT_NEWER = "NOT_NEWER"
    DESIRED_STATE_INVALID = "DESIRED_STATE_INVALID"
    DESIRED_STATE_MISMATCH = "DESIRED_STATE_MISMATCH"
    DISK_FULL = "DISK_FULL"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    BUNDLE_INVALID = "BUNDLE_INVALID"
    ATTESTATION_INVALID = "ATTESTATION_INVALID"
    STAGE_FAILED = "STAGE_FAILED"
    WARM_FAILED = "WARM_FAILED"
    SHADOW_FAILED = "SHADOW_FAILED"
    SHADOW_DIVERGENCE = "SHADOW_DIVERGENCE"
    SHADOW_NAN = "SHADOW_NAN"
    SHADOW_LATENCY = "SHADOW_LATENCY"
    SHADOW_ENVELOPE = "SHADOW_ENVELOPE"
    UNSAFE_TO_SWITCH = "UNSAFE_TO_SWITCH"
    ACTIVATE_FAILED = "ACTIVATE_FAILED"
    HEALTH_DEADLINE_MISSES = "HEALTH_DEADLINE_MISSES"
    HEALTH_INTERVENTIONS = "HEALTH_INTERVENTIONS"
    HEALTH_CRASH = "HEALTH_CRASH"
    HEALTH_WINDOW_FAILED = "HEALTH_WINDOW_FAILED"
    COMMIT_FAILED = "COMMIT_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    AGENT_RESTARTED = "AGENT_RESTARTED"


class UpdateError(Exception):
    """An update step failed; `reason` is the code reported in the event."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class UpdateStateError(ValueError):
    """The persisted update state file is unreadable; the message names the file."""


# --------------------------------------------------------------------------- plain data


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
class HealthReport:
    """Counters over the health window of the activated candidate and the baseline
    rates of the previous bundle (per tick), so a spike is judged as a rate."""

    ticks: int
    deadline_misses: int
    interventions: int
    crashed: bool = False
    baseline_miss_rate: float = 0.0
    baseline_intervention_rate: float = 0.0


@dataclass(frozen=True)
class HealthThresholds:
    miss_rate_max_increase: float = 0.01
    """Allowed increase of deadline misses per tick over the baseline."""
    intervention_rate_max_increase: float = 0.01


@dataclass(frozen=True)
class StepDeadlines:
    """Seconds each step may take before the update fails (or rolls back)."""

    refresh_s: float = 60.0
    download_s: float = 600.0
    verify_s: float = 60.0
    attest_s: float = 60.0
    stage_s: float = 60.0
    warm_s: float = 60.0
    shadow_s: float = 120.0
    safe_gate_s: float = 600.0
    activate_s: float = 30.0
    health_s: float = 120.0
    commit_s: float = 30.0

    def for_state(self, state: State) -> float:
        return {
            State.HINTED: self.refresh_s,
            State.REFRESHED: self.download_s,
            State.DOWNLOADED: self.verify_s,
            State.VERIFIED: self.attest_s,
            State.ATTESTED: self.stage_s,
            State.STAGED: self.warm_s,
            State.WARMED: self.shadow_s,
            State.SHADOW: self.safe_gate_s,
            State.SWITCHED: self.activate_s,
            State.HEALTH_WINDOW: self.health_s,
            State.COMMITTED: self.commit_s,
        }.get(state, 60.0)


def judge_shadow(
    result: ShadowResult, t: ShadowThresholds, divergence_limit: float | None = None
) -> tuple[Reason, str] | None:
    """None when the candidate may be actuated, else why not (NaN first: it poisons max).

    The candidate's own health on live observations is always judged (NaN, latency,
    envelope interventions). Its divergence from the active policy is judged only
    against a limit: the rollout's (`divergence_limit`), else the robot's; it is
    named in every verdict either way.
    """
    limit = divergence_limit if divergence_limit is not None else t.divergence_max
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


def judge_health(report: HealthReport, t: HealthThresholds) -> tuple[Reason, str] | None:
    """None when the activated candidate may be committed, else why it is rolled back."""
    if report.crashed:
        return Reason.HEALTH_CRASH, "the runtime stopped during the health window"
    ticks = max(report.ticks, 1)
    miss_rate = report.deadline_misses / ticks
    if miss_rate > report.baseline_miss_rate + t.miss_rate_max_increase:
        return (
            Reason.HEALTH_DEADLINE_MISSES,
            f"deadline misses {miss_rate:.4f}/tick vs baseline {report.baseline_miss_rate:.4f}",
        )
    int_rate = report.interventions / ticks
    if int_rate > report.baseline_intervention_rate + t.intervention_rate_max_increase:
        return (
            Reason.HEALTH_INTERVENTIONS,
            f"safety interventions {int_rate:.4f}/tick vs baseline "
            f"{report.baseline_intervention_rate:.4f}",
        )
    return None


# --------------------------------------------------------------------------- persisted record


class UpdateRecord(BaseModel):
    """The one persisted update (``<agent state>/update.json``)."""

    model_config = ConfigDict(extra="ignore")

    state: State = State.IDLE
    reason: Reason = Reason.OK
    detail: str = ""
    bundle_name: str = ""
    hint_sequence: int = 0
    generation: int = 0
    rollout_id: str = ""
    target: dict[str, str | int | float] = Field(default_factory=dict)
    bundle_dir: str = ""
    download_path: str = ""
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
        )


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
            return UpdateRecord.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise UpdateStateError(
                f"update state {self.path} is not a valid update record ({exc}); "
                "move it aside to start from IDLE"
            ) from exc

    def save(self, record: UpdateRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, record.model_dump_json(indent=2) + "\n")


class RecoveryAction(enum.StrEnum):
    NOTHING = "NOTHING"
    RESTART = "RESTART"
    ROLLBACK = "ROLLBACK"
    COMMIT = "COMMIT"


def recovery_plan(state: State) -> RecoveryAction:
    """What a restarted agent does with an update it finds persisted in `state`."""
    if state in TERMINAL:
        return RecoveryAction.NOTHING
    if state in ACTUATED:
        return RecoveryAction.ROLLBACK
    if state is State.COMMITTED:
        return RecoveryAction.COMMIT
    return RecoveryAction.RESTART


# --------------------------------------------------------------------------- the I/O shell


class UpdateEffects(Protocol):
    """The side effects of each step; raise :class:`UpdateError` to fail a step.

    ``timeout_s`` is that step's remaining deadline; implementations pass it on (gRPC
    deadlines, polling limits).
    """

    def refresh(self, bundle_name: str, timeout_s: float) -> TargetInfo: ...

    def check_desired_state(self, target: TargetInfo, timeout_s: float) -> None: ...

    def download(self, target: TargetInfo, timeout_s: float) -> Path: ...

    def verify(self, target: TargetInfo, download: Path, timeout_s: float) -> Path: ...

    def attest(self, target: TargetInfo, bundle_dir: Path, timeout_s: float) -> None: ...

    def stage(self, bundle_dir: Path, timeout_s: float) -> None: ...

    def warm(self, timeout_s: float) -> None: ...

    def shadow(self, timeout_s: float) -> ShadowResult: ...

    def wait_safe_to_switch(self, timeout_s: float) -> bool: ...

    def activate(self, timeout_s: float) -> None: ...

    def health_window(self, timeout_s: float) -> HealthReport: ...

    def commit(self, timeout_s: float) -> None: ...

    def rollback(self, reason: Reason, timeout_s: float) -> None: ...

    def installed_sequence(self, bundle_name: str) -> int:
        """The committed anti-rollback counter for `bundle_name` (0 if none)."""
        ...


EventSink = Callable[[UpdateRecord, State, Reason, str], None]


@dataclass
class UpdateRunner:
    """Drives one update at a time through the states, persisting before acting."""

    store: UpdateStateFile
    effects: UpdateEffects
    shadow_thresholds: ShadowThresholds = field(default_factory=ShadowThresholds)
    health_thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    deadlines: StepDeadlines = field(default_factory=StepDeadlines)
    on_event: EventSink | None = None
    clock: Callable[[], float] = time.time
    #: Test hook: called with each state right after it is persisted, before its effect.
    on_persisted: Callable[[State], None] | None = None

    # ---- entry points

    def start(
        self, bundle_name: str, sequence: int, generation: int = 0, rollout_id: str = ""
    ) -> UpdateRecord:
        """Begin an update for a (validated) hint and run it to a terminal state."""
        current = self.store.load()
        if current.state not in TERMINAL and current.state is not State.COMMITTED:
            raise UpdateError(
                Reason.HINT_IGNORED, f"an update is already in state {current.state.value}"
            )
        record = UpdateRecord(
            state=State.HINTED,
            bundle_name=bundle_name,
            hint_sequence=sequence,
            generation=generation,
            rollout_id=rollout_id,
            last_refresh_at=self.clock(),
        )
        return self._run(record)

    def resume(self) -> UpdateRecord:
        """After a restart: finish, restart or roll back what the state file says."""
        record = self.store.load()
        action = recovery_plan(record.state)
        if action is RecoveryAction.NOTHING:
            return record
        log.warning("resuming update found in state %s: %s", record.state.value, action.value)
        if action is RecoveryAction.ROLLBACK:
            return self._rollback(record, Reason.AGENT_RESTARTED, "agent restarted while actuated")
        if action is RecoveryAction.COMMIT:
            return self._run(record)
        record = record.model_copy(
            update={"state": State.HINTED, "attempts": record.attempts + 1, "detail": ""}
        )
        return self._run(record)

    # ---- the loop

    def _enter(
        self, record: UpdateRecord, state: State, reason: Reason, detail: str
    ) -> UpdateRecord:
        record = record.model_copy(
            update={"state": state, "reason": reason, "detail": detail, "entered_at": self.clock()}
        )
        self.store.save(record)
        if self.on_event is not None:
            try:
                self.on_event(record, state, reason, detail)
            except Exception:  # reporting must never break the update itself
                log.exception("update event sink failed")
        if self.on_persisted is not None:
            self.on_persisted(state)
        return record

    def _run(self, record: UpdateRecord) -> UpdateRecord:
        record = self._enter(record, record.state, Reason.OK, record.detail)
        while record.state not in TERMINAL:
            state = record.state
            budget = self.deadlines.for_state(state)
            started = time.monotonic()
            try:
                update = self._act(record, budget)
                if time.monotonic() - started > budget:
                    raise UpdateError(
                        Reason.DEADLINE_EXCEEDED, f"{state.value} took longer than {budget:.0f} s"
                    )
            except UpdateError as exc:
                if state in ACTUATED or state is State.COMMITTED:
                    return self._rollback(record, exc.reason, exc.detail)
                return self._fail(record, exc.reason, exc.detail)
            except Exception as exc:  # an effect bug must not wedge the robot mid-update
                log.exception("update step %s raised", state.value)
                if state in ACTUATED or state is State.COMMITTED:
                    return self._rollback(record, Reason.HEALTH_CRASH, repr(exc))
                return self._fail(record, _reason_for(state), repr(exc))
            if state is State.COMMITTED:
                return self._enter(record.model_copy(update=update), State.IDLE, Reason.OK, "")
            nxt = PATH[PATH.index(state) + 1]
            detail = str(update.pop("detail", ""))
            record = self._enter(record.model_copy(update=update), nxt, Reason.OK, detail)
        return record

    def _act(self, record: UpdateRecord, budget: float) -> dict[str, object]:
        e = self.effects
        s = record.state
        if s is State.HINTED:
            target = e.refresh(record.bundle_name, budget)
            if target.sequence <= e.installed_sequence(target.name):
                raise UpdateError(
                    Reason.NOT_NEWER,
                    f"TUF target {target.name} sequence {target.sequence} is not newer than "
                    f"the installed {e.installed_sequence(target.name)}",
                )
            e.check_desired_state(target, budget)
            return {"target": _target_dict(target)}
        target = record.target_info()
        if s is State.REFRESHED:
            return {"download_path": str(e.download(target, budget))}
        if s is State.DOWNLOADED:
            return {"bundle_dir": str(e.verify(target, Path(record.download_path), budget))}
        if s is State.VERIFIED:
            e.attest(target, Path(record.bundle_dir), budget)
        elif s is State.ATTESTED:
            e.stage(Path(record.bundle_dir), budget)
        elif s is State.STAGED:
            e.warm(budget)
        elif s is State.WARMED:
            result = e.shadow(budget)
            limit = target.max_action_divergence
            verdict = judge_shadow(result, self.shadow_thresholds, limit)
            if verdict is not None:
                raise UpdateError(*verdict)
            limit = limit if limit is not None else self.shadow_thresholds.divergence_max
            enforced = f"limit {limit:.4g}" if limit is not None else "not enforced"
            # The shadow evidence travels with the SHADOW event (and so into the store).
            return {
                "detail": (
                    f"shadow {result.ticks} ticks: max divergence {result.divergence_max:.4g} "
                    f"({enforced}), "
                    f"NaN rate {result.nan_rate:.4g}, p99 {result.latency_p99_ms:.3f} ms, "
                    f"envelope violations {result.envelope_violations}"
                )
            }
        elif s is State.SHADOW:
            # Shadow passed; nothing is actuated until the integrator's gate says so.
            if not e.wait_safe_to_switch(budget):
                raise UpdateError(
                    Reason.UNSAFE_TO_SWITCH,
                    f"the robot did not report safe-to-switch within {budget:.0f} s",
                )
        elif s is State.SWITCHED:
            # SWITCHED is on disk before the switch, so a kill mid-call rolls back.
            e.activate(budget)
        elif s is State.HEALTH_WINDOW:
            verdict = judge_health(e.health_window(budget), self.health_thresholds)
            if verdict is not None:
                raise UpdateError(*verdict)
        elif s is State.COMMITTED:
            e.commit(budget)
        return {}

    def _fail(self, record: UpdateRecord, reason: Reason, detail: str) -> UpdateRecord:
        log.warning(
            "update of %s failed in %s: %s %s", record.bundle_name, record.state, reason, detail
        )
        if record.state in (State.STAGED, State.WARMED, State.SHADOW):
            # A staged candidate is discarded so the inactive slot is not left half-used;
            # the active bundle never stopped running.
            try:
                self.effects.rollback(reason, self.deadlines.commit_s)
            except Exception:
                log.exception("discarding the staged candidate failed")
        return self._enter(record, State.FAILED, reason, detail)

    def _rollback(self, record: UpdateRecord, reason: Reason, detail: str) -> UpdateRecord:
        log.warning(
            "rolling back %s from %s: %s %s", record.bundle_name, record.state, reason, detail
        )
        try:
            self.effects.rollback(reason, self.deadlines.commit_s)
        except Exception as exc:
            # The runtime's own boot-count fallback reverts an uncommitted slot; record it.
            log.exception("rollback call failed")
            detail = f"{detail}; rollback call failed: {exc!r}"
        return self._enter(record, State.ROLLED_BACK, reason, detail)


def _target_dict(t: TargetInfo) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {
        "name": t.name,
        "version": t.version,
        "sequence": t.sequence,
        "target_path": t.target_path,
        "length": t.length,
        "sha256": t.sha256,
    }
    if t.max_action_divergence is not None:
        out["max_action_divergence"] = t.max_action_divergence
    return out


def _limit(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reason_for(state: State) -> Reason:
    reasons: Mapping[State, Reason] = {
        State.HINTED: Reason.TUF_REFRESH_FAILED,
        State.REFRESHED: Reason.DOWNLOAD_FAILED,
        State.DOWNLOADED: Reason.BUNDLE_INVALID,
        State.VERIFIED: Reason.ATTESTATION_INVALID,
        State.ATTESTED: Reason.STAGE_FAILED,
        State.STAGED: Reason.WARM_FAILED,
        State.WARMED: Reason.SHADOW_FAILED,
        State.SHADOW: Reason.UNSAFE_TO_SWITCH,
        State.SWITCHED: Reason.ACTIVATE_FAILED,
    }
    return reasons.get(state, Reason.HEALTH_CRASH)
