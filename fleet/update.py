"""The update state machine on the robot: the thin I/O shell around :mod:`fleet.update_core`.

``IDLE → REFRESHING → DOWNLOADING → STAGING → ATTESTING → SHADOWING → SWITCHING →
HEALTH_WINDOW → COMMITTING → COMMITTED``, with ``FAILED(reason)`` and
``ROLLED_BACK(reason)`` exits (the words of :mod:`protos.lifecycle`).

Before the switch the runner asks its :class:`~fleet.update_hold.SwitchHold` (when it
has one): while an update lock holds or the maintenance window is closed, the update
waits in ``HELD`` — reported again whenever the reason or its detail changes — and
goes on to ``SWITCHING`` as soon as nothing holds.

For each state :class:`UpdateRunner`

1. persists the record (``runtime.atomicio``: temp file + fsync + rename) *before*
   acting, so a kill at any point finds on disk the step that was in progress,
2. calls the one effect that step owns (:class:`UpdateEffects`, the plug point the
   agent wires to TUF, gRPC and ``RuntimeControl``) with the step's deadline,
3. reports the transition as an event with a reason code and a detail.

The bundle is verified once per update, by the runtime while it stages it (on the
copy it will run); what it verified (:class:`StagedBundle`) is checked against the
TUF target and passed on to the attestation check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from fleet.update_core import (
    ACTUATED,
    HOLDS_CANDIDATE,
    PATH,
    TERMINAL,
    RecoveryAction,
    ShadowResult,
    ShadowThresholds,
    StagedBundle,
    StepDeadlines,
    TargetInfo,
    UpdateError,
    UpdateRecord,
    UpdateStateError,
    UpdateStateFile,
    judge_shadow,
    plain,
    recovery_plan,
    shadow_summary,
)
from fleet.update_hold import Hold, SwitchHold
from protos.lifecycle import Failure, Reason, UpdateState

__all__ = [
    "PATH",
    "Reason",
    "RecoveryAction",
    "ShadowResult",
    "ShadowThresholds",
    "StagedBundle",
    "StepDeadlines",
    "TargetInfo",
    "UpdateEffects",
    "UpdateError",
    "UpdateRecord",
    "UpdateRunner",
    "UpdateState",
    "UpdateStateError",
    "UpdateStateFile",
    "judge_shadow",
    "recovery_plan",
]

log = logging.getLogger(__name__)
S = UpdateState


class UpdateEffects(Protocol):
    """The side effects of each step; raise :class:`UpdateError` to fail a step.

    ``timeout_s`` is that step's remaining deadline; implementations pass it on (gRPC
    deadlines, polling limits).
    """

    def refresh(self, bundle_name: str, timeout_s: float) -> TargetInfo:
        """Refresh TUF and check the signed desired state against the resolved target."""
        ...

    def download(self, target: TargetInfo, timeout_s: float) -> Path: ...

    def stage(self, target: TargetInfo, download: Path, timeout_s: float) -> StagedBundle:
        """Unpack; the runtime verifies, copies into its inactive slot, loads and warms."""
        ...

    def attest(self, target: TargetInfo, staged: StagedBundle, timeout_s: float) -> None: ...

    def shadow(self, timeout_s: float) -> ShadowResult: ...

    def switch(self, timeout_s: float) -> None:
        """Switch on a tick where the robot allows it (UNSAFE_TO_SWITCH if it never does)."""
        ...

    def health_window(self, timeout_s: float) -> None:
        """The runtime judges the candidate; raise its verdict if it rolled back."""
        ...

    def commit(self, timeout_s: float) -> None: ...

    def rollback(self, failure: Failure, timeout_s: float) -> None: ...

    def installed_sequence(self, bundle_name: str) -> int:
        """The committed anti-rollback counter for `bundle_name` (0 if none)."""
        ...


EventSink = Callable[[UpdateRecord, UpdateState, Reason, str], None]


@dataclass
class UpdateRunner:
    """Drives one update at a time through the states, persisting before acting."""

    store: UpdateStateFile
    effects: UpdateEffects
    shadow_thresholds: ShadowThresholds = field(default_factory=ShadowThresholds)
    deadlines: StepDeadlines = field(default_factory=StepDeadlines)
    on_event: EventSink | None = None
    clock: Callable[[], float] = time.time
    #: Test hook: called with each state right after it is persisted, before its effect.
    on_persisted: Callable[[UpdateState], None] | None = None
    #: Update locks and maintenance windows; None: the switch never waits.
    hold: SwitchHold | None = None
    #: While HELD: the windows the signed desired state gives `target` now (as
    #: ``TargetInfo.windows``); raises UpdateError when it wants another bundle.
    recheck_windows: Callable[[TargetInfo, float], str] | None = None
    recheck_s: float = 300.0

    # ---- entry points

    def start(
        self, bundle_name: str, sequence: int, generation: int = 0, rollout_id: str = ""
    ) -> UpdateRecord:
        """Begin an update for a (validated) hint and run it to a terminal state."""
        current = self.store.load()
        if current.state not in TERMINAL:
            raise UpdateError(
                Reason.HINT_IGNORED, f"an update is already in state {current.state.value}"
            )
        record = UpdateRecord(
            state=S.REFRESHING,
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
            update={"state": S.REFRESHING, "attempts": record.attempts + 1, "detail": ""}
        )
        return self._run(record)

    # ---- the loop

    def _enter(
        self, record: UpdateRecord, state: UpdateState, reason: Reason, detail: str
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
            except _Stopped:
                return record  # still HELD on disk: a restarted agent starts it afresh
            except UpdateError as exc:
                if state in ACTUATED:
                    return self._rollback(record, exc.reason, exc.detail)
                return self._fail(record, exc.reason, exc.detail)
            except Exception as exc:  # an effect bug must not wedge the robot mid-update
                log.exception("update step %s raised", state.value)
                if state in ACTUATED:
                    return self._rollback(record, Reason.HEALTH_CRASH, repr(exc))
                return self._fail(record, _reason_for(state), repr(exc))
            nxt = _next(state)
            detail = str(update.pop("detail", ""))
            record = record.model_copy(update=update)
            held = self._held(record) if nxt is S.SWITCHING and state is not S.HELD else None
            if held is not None:
                record = self._enter(record, S.HELD, held.reason, held.detail)
                continue
            record = self._enter(record, nxt, Reason.OK, detail)
        return record

    def _held(self, record: UpdateRecord) -> Hold | None:
        if self.hold is None:
            return None
        try:
            return self.hold.check(record.target_info().maintenance_windows())
        except Exception as exc:  # never switch on a check that did not answer
            log.exception("update hold check failed")
            return Hold(Reason.UPDATE_LOCKED, f"the hold check failed: {exc!r}", self.clock())

    def _wait_for_switch(self, record: UpdateRecord, budget: float) -> dict[str, object]:
        """HELD: wait until nothing holds, reporting each change of reason or detail.

        Every `recheck_s` the signed desired state is asked again for this bundle's
        windows (a window the operator changed or removed applies to the held update);
        one that now names another bundle drops the held update. Offline, the windows
        it was given stand."""
        hold = self.hold
        if hold is None:
            return {}
        target = record.target_info()
        windows = target.maintenance_windows()
        started = time.monotonic()
        next_recheck = started + self.recheck_s
        while True:
            if self.recheck_windows is not None and time.monotonic() >= next_recheck:
                next_recheck = time.monotonic() + self.recheck_s
                text = self._recheck(target)
                if text != target.windows:
                    target = replace(target, windows=text)
                    windows = target.maintenance_windows()
                    record = record.model_copy(update={"target": plain(target)})
            held = hold.check(windows)
            if held is None:
                waited = time.monotonic() - started
                return {"detail": f"released after {waited:.0f} s held", "target": plain(target)}
            if time.monotonic() - started > budget:
                raise UpdateError(held.reason, f"held for more than {budget:.0f} s: {held.detail}")
            if (held.reason, held.detail) != (record.reason, record.detail):
                record = self._enter(record, S.HELD, held.reason, held.detail)
            if not hold.wait(held):
                raise _Stopped

    def _recheck(self, target: TargetInfo) -> str:
        assert self.recheck_windows is not None
        try:
            return self.recheck_windows(target, 30.0)
        except UpdateError:
            raise
        except Exception as exc:  # offline or the plane is down: keep what we were given
            log.info("could not re-read the maintenance windows: %s", exc)
            return target.windows

    def _act(self, record: UpdateRecord, budget: float) -> dict[str, object]:
        e = self.effects
        s = record.state
        if s is S.REFRESHING:
            target = e.refresh(record.bundle_name, budget)
            installed = e.installed_sequence(target.name)
            if target.sequence <= installed:
                raise UpdateError(
                    Reason.NOT_NEWER,
                    f"TUF target {target.name} sequence {target.sequence} is not newer than "
                    f"the installed {installed}",
                )
            return {"target": plain(target), "detail": _transport_note(e)}
        target = record.target_info()
        if s is S.DOWNLOADING:
            return {"download_path": str(e.download(target, budget)), "detail": _transport_note(e)}
        if s is S.STAGING:
            staged = e.stage(target, Path(record.download_path), budget)
            # Record first: a mismatch fails here, and a failure discards the candidate.
            if staged.name != target.name or staged.sequence != target.sequence:
                raise UpdateError(
                    Reason.BUNDLE_INVALID,
                    f"bundle says {staged.name} sequence {staged.sequence}, TUF says "
                    f"{target.name} sequence {target.sequence}",
                )
            return {"staged": plain(staged)}
        if s is S.ATTESTING:
            e.attest(target, record.staged_bundle(), budget)
        elif s is S.SHADOWING:
            result = e.shadow(budget)
            limit = target.max_action_divergence
            verdict = judge_shadow(result, self.shadow_thresholds, limit)
            if verdict is not None:
                raise UpdateError(*verdict)
            # The evidence travels with the next event (and so into the store).
            return {"detail": shadow_summary(result, self.shadow_thresholds, limit)}
        elif s is S.HELD:
            return self._wait_for_switch(record, budget)
        elif s is S.SWITCHING:
            # SWITCHING is on disk before the switch, so a kill mid-call rolls back.
            e.switch(budget)
        elif s is S.HEALTH_WINDOW:
            e.health_window(budget)
        elif s is S.COMMITTING:
            e.commit(budget)
        return {}

    def _fail(self, record: UpdateRecord, reason: Reason, detail: str) -> UpdateRecord:
        log.warning(
            "update of %s failed in %s: %s %s", record.bundle_name, record.state, reason, detail
        )
        if record.state in HOLDS_CANDIDATE:
            # A staged candidate is discarded so the inactive slot is not left half-used;
            # the active bundle never stopped running.
            try:
                self.effects.rollback(Failure(reason, detail), self.deadlines.commit_s)
            except Exception:
                log.exception("discarding the staged candidate failed")
        return self._enter(record, S.FAILED, reason, detail)

    def _rollback(self, record: UpdateRecord, reason: Reason, detail: str) -> UpdateRecord:
        log.warning(
            "rolling back %s from %s: %s %s", record.bundle_name, record.state, reason, detail
        )
        try:
            self.effects.rollback(Failure(reason, detail), self.deadlines.commit_s)
        except Exception as exc:
            # The runtime's own boot-count fallback reverts an uncommitted slot; record it.
            log.exception("rollback call failed")
            detail = f"{detail}; rollback call failed: {exc!r}"
        return self._enter(record, S.ROLLED_BACK, reason, detail)


def _transport_note(effects: UpdateEffects) -> str:
    """What effects that can fetch over more than one transport say about this update
    (e.g. "fetched over MQTT: ..."); empty for the others."""
    note = getattr(effects, "transport_note", None)
    return str(note()) if callable(note) else ""


class _Stopped(Exception):
    """The agent is shutting down while the update is held."""


def _next(state: UpdateState) -> UpdateState:
    if state is S.COMMITTING:
        return S.COMMITTED
    if state is S.HELD:
        return S.SWITCHING
    return PATH[PATH.index(state) + 1]


def _reason_for(state: UpdateState) -> Reason:
    """The reason of an unexpected error in a step that has not actuated anything."""
    reasons: Mapping[UpdateState, Reason] = {
        S.REFRESHING: Reason.TUF_REFRESH_FAILED,
        S.DOWNLOADING: Reason.DOWNLOAD_FAILED,
        S.STAGING: Reason.STAGE_FAILED,
        S.ATTESTING: Reason.ATTESTATION_INVALID,
        S.SHADOWING: Reason.SHADOW_FAILED,
        S.HELD: Reason.UPDATE_LOCKED,
    }
    return reasons.get(state, Reason.HEALTH_CRASH)
