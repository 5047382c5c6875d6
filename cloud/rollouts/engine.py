"""The pure staged-rollout engine: wave planning and one state machine per rollout.

No I/O here: the caller passes the clock (`now`, epoch seconds) and device outcomes,
and carries out what the engine asks for (dispatch a wave, restore bundles on abort).
A rollout is a plain object that round-trips through JSON (``to_status``/``from_record``)
so the control plane's store keeps it between passes and restarts.

States (in the manner of Eclipse hawkBit's rollouts)::

    pending --start--> running --all waves done--> completed
                       running <--resume-- paused <--pause / threshold-- running
    pending | running | paused --abort--> aborted

A wave advances only when every device in it reached a terminal outcome (COMMITTED
is a success; FAILED, ROLLED_BACK, or SILENT — no outcome before the wave's deadline —
are failures) and its failure fraction is at most ``max_failure_fraction``. Once the
failures already exceed that fraction the rollout pauses at once (no later outcome
can bring the fraction back under it). Every transition is recorded with a reason.
A device skipped by the offline policy (``Rollout.skip``) no longer holds its wave and
is no failure; one that joins while the rollout runs (``Rollout.join``) joins the
current wave.

A device whose switch waits on the robot (it reports HELD: an update lock,
``UPDATE_LOCKED``, or a closed maintenance window, ``OUTSIDE_WINDOW``; ``Rollout.hold``)
is waited for: neither committed nor failed nor silent. When it leaves HELD
(``Rollout.release``) its own health window starts again from then. One held for
longer than ``max_held_s`` (``gates["max_held_s"]``, default one day) since it first
reported HELD is skipped (``skipped[...]["held"]``): the wave no longer waits for it,
it is no failure, and its desired state stays at the bundle. A device skipped so leaves
its wave's count for the failure fraction, as it leaves the abort threshold's; one that
is still held counts as a device that has not reported yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protos.lifecycle import FAILURE_OUTCOMES, Outcome, Reason, UpdateState

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_MAX_HELD_S",
    "FAILURE_OUTCOMES",
    "HELD",
    "HOLD_REASONS",
    "Rollout",
    "RolloutError",
    "RolloutSpec",
    "SpecError",
    "TransitionError",
    "Wave",
    "check_max_held",
    "plan_waves",
]

PENDING, RUNNING, PAUSED, ABORTED, COMPLETED = (
    "pending",
    "running",
    "paused",
    "aborted",
    "completed",
)
ACTIVE_STATES = frozenset({PENDING, RUNNING, PAUSED})
# What a device reports while its switch waits on the robot (state HELD).
HELD = UpdateState.HELD.value
HOLD_REASONS = frozenset({Reason.UPDATE_LOCKED.value, Reason.OUTSIDE_WINDOW.value})
DEFAULT_MAX_HELD_S = 86400.0
COMMITTED, FAILED, ROLLED_BACK, SILENT = (
    Outcome.COMMITTED,
    Outcome.FAILED,
    Outcome.ROLLED_BACK,
    Outcome.SILENT,
)
OUTCOMES = frozenset(Outcome)
DEFAULT_HEALTH_WINDOW_S = 600.0


class RolloutError(Exception):
    """Base error of the rollout engine."""


class SpecError(RolloutError):
    """The rollout request is not valid; the message names the field."""


class TransitionError(RolloutError):
    """The requested transition is not allowed from the rollout's current state."""


def plan_waves(device_ids: Sequence[str], fractions: Sequence[float]) -> list[list[str]]:
    """Split `device_ids` (sorted, deduplicated) into waves by cumulative `fractions`.

    Wave i ends at ``ceil(fraction_i * n)`` devices, so the first wave has at least one
    device (a canary) and rounding never leaves a device out; fractions that round to
    the same count would give an empty wave, which is dropped. The last fraction must be
    1.0 (every device is covered).
    """
    ids = sorted(set(device_ids))
    if not ids:
        raise SpecError("device_ids: no devices to roll out to")
    fr = list(fractions) or [1.0]
    for i, f in enumerate(fr):
        if not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise SpecError(f"wave_fractions[{i}] = {f}: each fraction must be in (0, 1]")
        if i and f <= fr[i - 1]:
            raise SpecError(
                f"wave_fractions must increase (cumulative): {fr[i - 1]} then {f} at index {i}"
            )
    if fr[-1] != 1.0:
        raise SpecError(f"wave_fractions must end at 1.0 (every device); got {fr[-1]}")
    n = len(ids)
    waves: list[list[str]] = []
    start = 0
    for f in fr:
        # ceil with a tolerance: 0.3 * 10 is 3.0000000000000004 in floating point
        end = min(n, math.ceil(f * n - 1e-9))
        if end > start:
            waves.append(ids[start:end])
            start = end
    return waves


def check_max_held(value: object) -> float:
    """A valid bound on how long a held device is waited for (seconds > 0; None: the
    default); SpecError otherwise."""
    if value is None:
        return DEFAULT_MAX_HELD_S
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SpecError(f"max_held_s = {value!r}: expected a number of seconds > 0")
    return float(value)


@dataclass(frozen=True)
class RolloutSpec:
    """What the operator asked for; immutable once the rollout exists.

    `bundle` is the desired-state document pushed to devices (name, version, sequence,
    target, sha256, length — what cloud.push sets). `health_window_s` is how long a
    wave's devices have, from dispatch, to report a terminal outcome before they count
    as SILENT failures.
    """

    bundle: Mapping[str, Any]
    device_ids: tuple[str, ...]
    wave_fractions: tuple[float, ...] = (1.0,)
    max_failure_fraction: float = 0.0
    health_window_s: float = DEFAULT_HEALTH_WINDOW_S
    label_selector: str = ""
    # the rollout's gates as `cloud.rollouts.gates.GateSpec.to_dict` writes them
    gates: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("name", "version"):
            if not str(self.bundle.get(key, "")):
                raise SpecError(f"bundle.{key} is empty")
        if not (
            math.isfinite(self.max_failure_fraction) and 0.0 <= self.max_failure_fraction <= 1.0
        ):
            raise SpecError(
                f"max_failure_fraction = {self.max_failure_fraction}: must be in [0, 1]"
            )
        if not (math.isfinite(self.health_window_s) and self.health_window_s > 0):
            raise SpecError(f"health_window_s = {self.health_window_s}: must be > 0")
        plan_waves(self.device_ids, self.wave_fractions)  # validates ids and fractions
        check_max_held(self.gates.get("max_held_s"))

    @property
    def max_held_s(self) -> float:
        """How long a device that reports HELD is waited for before it is skipped."""
        return check_max_held(self.gates.get("max_held_s"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": dict(self.bundle),
            "device_ids": list(self.device_ids),
            "wave_fractions": list(self.wave_fractions),
            "max_failure_fraction": self.max_failure_fraction,
            "health_window_s": self.health_window_s,
            "label_selector": self.label_selector,
            "gates": dict(self.gates),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutSpec:
        return cls(
            bundle=dict(d["bundle"]),
            device_ids=tuple(d["device_ids"]),
            wave_fractions=tuple(float(f) for f in d["wave_fractions"]),
            max_failure_fraction=float(d["max_failure_fraction"]),
            health_window_s=float(d["health_window_s"]),
            label_selector=str(d.get("label_selector", "")),
            gates=dict(d.get("gates") or {}),
        )


@dataclass
class Wave:
    """One wave. `state`: pending | running | succeeded | failed | overridden | cancelled."""

    index: int
    device_ids: list[str]
    state: str = "pending"
    dispatched_at: float | None = None
    deadline: float | None = None
    # device -> {"outcome": an Outcome, "reason": a Reason code, "detail": str, "at": float}
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # device -> the desired bundle it had before this wave (None: it had none)
    previous: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    # devices the offline policy skipped: device -> {"at": float, "reason": str}
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)
    # devices that joined the wave while the rollout ran (in the order they joined)
    joined: list[str] = field(default_factory=list)
    # devices whose switch waits on the robot now: device -> {"reason": UPDATE_LOCKED |
    # OUTSIDE_WINDOW, "detail": str, "since": first reported HELD, "at": last seen so}
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    # devices that left HELD: device -> when (their own health window starts then)
    released: dict[str, float] = field(default_factory=dict)
    # a set of device_ids for lookups (waves hold thousands), built for `_members_of` ids
    _members: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    _members_of: int = field(default=-1, init=False, repr=False, compare=False)

    def has(self, device_id: str) -> bool:
        """`device_id` is one of the wave's devices."""
        if self._members_of != len(self.device_ids):  # devices only ever join
            self._members = set(self.device_ids)
            self._members_of = len(self.device_ids)
        return device_id in self._members

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o["outcome"] == outcome)

    @property
    def held_skipped(self) -> list[str]:
        """Devices skipped because they were held for longer than the rollout's bound."""
        return [d for d, s in self.skipped.items() if s.get("held")]

    def deadline_of(self, device_id: str, health_window_s: float) -> float | None:
        """When `device_id` goes SILENT: the wave's deadline, or a health window after
        it left HELD if that is later."""
        if self.deadline is None:
            return None
        left = self.released.get(device_id)
        return self.deadline if left is None else max(self.deadline, left + health_window_s)

    @property
    def failures(self) -> int:
        return sum(1 for o in self.outcomes.values() if o["outcome"] in FAILURE_OUTCOMES)

    @property
    def waiting(self) -> list[str]:
        """Devices of a dispatched wave with no terminal outcome yet (and not skipped)."""
        return [d for d in self.device_ids if d not in self.outcomes and d not in self.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "device_ids": list(self.device_ids),
            "state": self.state,
            "dispatched_at": self.dispatched_at,
            "deadline": self.deadline,
            "outcomes": {k: dict(v) for k, v in self.outcomes.items()},
            "previous": {k: (dict(v) if v else None) for k, v in self.previous.items()},
            "skipped": {k: dict(v) for k, v in self.skipped.items()},
            "joined": list(self.joined),
            "held": {k: dict(v) for k, v in self.held.items()},
            "released": dict(self.released),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Wave:
        return cls(
            index=int(d["index"]),
            device_ids=list(d["device_ids"]),
            state=str(d["state"]),
            dispatched_at=d.get("dispatched_at"),
            deadline=d.get("deadline"),
            outcomes={k: dict(v) for k, v in (d.get("outcomes") or {}).items()},
            previous={k: (dict(v) if v else None) for k, v in (d.get("previous") or {}).items()},
            skipped={k: dict(v) for k, v in (d.get("skipped") or {}).items()},
            joined=list(d.get("joined") or []),
            held={k: dict(v) for k, v in (d.get("held") or {}).items()},
            released={k: float(v) for k, v in (d.get("released") or {}).items()},
        )


@dataclass
class Rollout:
    id: str
    spec: RolloutSpec
    waves: list[Wave]
    state: str = PENDING
    current: int = 0
    reason: str = ""
    created_at: float = 0.0
    created_by: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    # what the gates recorded (approvals, attestation checks): `cloud.rollouts.gates`
    gates: dict[str, Any] = field(default_factory=dict)
    # the stored revision this object was read at (0: not stored yet); its writer saves
    # only over that revision (`Store.put_rollout`)
    revision: int = field(default=0, compare=False)

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, rollout_id: str, spec: RolloutSpec, *, now: float, created_by: str) -> Rollout:
        waves = [
            Wave(i, ids) for i, ids in enumerate(plan_waves(spec.device_ids, spec.wave_fractions))
        ]
        r = cls(rollout_id, spec, waves, created_at=now, created_by=created_by)
        sizes = "+".join(str(len(w.device_ids)) for w in waves)
        r._record(
            now, "", PENDING, f"created by {created_by}: {len(waves)} wave(s) of {sizes} device(s)"
        )
        return r

    # ------------------------------------------------------------------ persistence
    def to_status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "current": self.current,
            "reason": self.reason,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "waves": [w.to_dict() for w in self.waves],
            "history": list(self.history),
            "gates": dict(self.gates),
        }

    @classmethod
    def from_dicts(
        cls, rollout_id: str, spec: Mapping[str, Any], status: Mapping[str, Any]
    ) -> Rollout:
        return cls(
            id=rollout_id,
            spec=RolloutSpec.from_dict(spec),
            waves=[Wave.from_dict(w) for w in status["waves"]],
            state=str(status["state"]),
            current=int(status["current"]),
            reason=str(status.get("reason", "")),
            created_at=float(status.get("created_at", 0.0)),
            created_by=str(status.get("created_by", "")),
            history=list(status.get("history", [])),
            gates=dict(status.get("gates") or {}),
            revision=int(status.get("revision") or 0),
        )

    # ------------------------------------------------------------------ transitions
    def _record(self, now: float, old: str, new: str, reason: str) -> None:
        self.state = new
        self.reason = reason
        self.history.append({"at": now, "from": old, "to": new, "reason": reason})

    def _move(self, now: float, new: str, reason: str) -> None:
        self._record(now, self.state, new, reason)

    @property
    def wave(self) -> Wave:
        return self.waves[self.current]

    def start(self, now: float) -> None:
        if self.state != PENDING:
            raise TransitionError(f"rollout {self.id} is {self.state}; only a pending one starts")
        self._move(now, RUNNING, "started")

    def next_dispatch(self) -> Wave | None:
        """The wave the caller must dispatch now (set desired state, hint), if any."""
        if self.state == RUNNING and self.wave.state == "pending":
            return self.wave
        return None

    def dispatched(
        self, index: int, now: float, previous: Mapping[str, Mapping[str, Any] | None]
    ) -> None:
        """The caller pointed wave `index` at the bundle; `previous`: each device's old one."""
        w = self.waves[index]
        if w.state != "pending" or index != self.current:
            raise TransitionError(f"wave {index} of rollout {self.id} is not the one to dispatch")
        w.state = "running"
        w.dispatched_at = now
        w.deadline = now + self.spec.health_window_s
        w.previous = {d: (dict(p) if p else None) for d, p in previous.items()}
        self.history.append(
            {
                "at": now,
                "from": self.state,
                "to": self.state,
                "reason": f"wave {index} dispatched to {len(w.device_ids)} device(s)",
            }
        )

    def observe(
        self, device_id: str, outcome: str, reason: str, now: float, detail: str = ""
    ) -> bool:
        """Record a device's terminal outcome (first one wins) with its reason code and
        detail as the device reported them. True if it was new."""
        if outcome not in OUTCOMES:
            raise RolloutError(
                f"unknown device outcome {outcome!r}; expected one of {sorted(OUTCOMES)}"
            )
        for w in self.waves:
            if w.has(device_id) and w.dispatched_at is not None:
                if device_id in w.outcomes:
                    return False
                w.held.pop(device_id, None)
                w.outcomes[device_id] = {
                    "outcome": outcome,
                    "reason": reason,
                    "detail": detail,
                    "at": now,
                }
                return True
        return False

    def evaluate(self, now: float) -> None:
        """Apply deadlines and the wave gate: advance, complete, or pause (with a reason)."""
        if self.state not in (RUNNING, PAUSED):
            return
        hw = self.spec.health_window_s
        for w in self.waves:  # devices silent past their deadline are failures
            if w.dispatched_at is None:
                continue
            for d in w.waiting:
                if d in w.held:
                    self._held_too_long(w, d, now)
                    continue
                deadline = w.deadline_of(d, hw)
                if deadline is not None and now >= deadline:
                    w.outcomes[d] = {
                        "outcome": SILENT,
                        "reason": "",
                        "detail": f"no outcome within {hw:g} s",
                        "at": now,
                    }
        if self.state != RUNNING:
            return
        w = self.wave
        if w.state != "running":
            return
        n = len(w.device_ids) - len(w.held_skipped)
        allowed = self.spec.max_failure_fraction * n
        if w.failures > allowed + 1e-9:
            w.state = "failed"
            kinds = ", ".join(
                f"{k.lower()} {w.count(k)}" for k in (FAILED, ROLLED_BACK, SILENT) if w.count(k)
            )
            self._move(
                now,
                PAUSED,
                f"wave {w.index}: {w.failures}/{n} devices failed ({kinds}) > "
                f"max_failure_fraction {self.spec.max_failure_fraction:g}",
            )
            return
        if w.waiting:
            return
        w.state = "succeeded"
        held = f", {len(w.held_skipped)} skipped while held" if w.held_skipped else ""
        self._advance(now, f"wave {w.index} succeeded ({w.count(COMMITTED)}/{n} committed{held})")

    def _held_too_long(self, w: Wave, device_id: str, now: float) -> None:
        h = w.held[device_id]
        bound = self.spec.max_held_s
        if now - float(h["since"]) < bound:
            return
        del w.held[device_id]
        w.skipped[device_id] = {
            "at": now,
            "held": True,
            "reason": (
                f"held ({h['reason']}: {h['detail']}) for more than {bound:g} s "
                "(max_held); it updates when released"
            ),
        }
        self.note(now, f"{device_id} skipped in wave {w.index}: {w.skipped[device_id]['reason']}")

    def hold(self, device_id: str, reason: str, detail: str, since: float, now: float) -> bool:
        """The device reports HELD (`reason`: UPDATE_LOCKED or OUTSIDE_WINDOW) since
        `since`: wait for it. True if that is new or its reason or detail changed."""
        if reason not in HOLD_REASONS:
            raise RolloutError(f"hold reason {reason!r}: expected one of {sorted(HOLD_REASONS)}")
        for w in self.waves:
            if w.has(device_id) and w.dispatched_at is not None:
                if device_id in w.outcomes or device_id in w.skipped:
                    return False
                old = w.held.get(device_id)
                if old is not None and (old["reason"], old["detail"]) == (reason, detail):
                    old["at"] = now
                    return False
                first = float(old["since"]) if old is not None else since
                w.held[device_id] = {"reason": reason, "detail": detail, "since": first, "at": now}
                if old is None:
                    self.note(now, f"{device_id} held in wave {w.index} ({reason}: {detail})")
                return True
        return False

    def release(self, device_id: str, now: float) -> bool:
        """The held device left HELD: its own health window starts now. True if it was
        held."""
        for w in self.waves:
            if device_id in w.held:
                h = w.held.pop(device_id)
                w.released[device_id] = now
                self.note(
                    now,
                    f"{device_id} released in wave {w.index} after "
                    f"{now - float(h['since']):.0f} s held",
                )
                return True
        return False

    def _advance(self, now: float, why: str) -> None:
        if self.current + 1 < len(self.waves):
            self.current += 1
            self.history.append({"at": now, "from": self.state, "to": self.state, "reason": why})
        else:
            self._move(now, COMPLETED, f"{why}; all {len(self.waves)} wave(s) done")

    def pause(self, now: float, reason: str) -> None:
        if self.state not in (PENDING, RUNNING):
            raise TransitionError(
                f"rollout {self.id} is {self.state}; only pending or running pauses"
            )
        self._move(now, PAUSED, reason)

    def resume(self, now: float, by: str) -> None:
        """Continue. A wave that failed its gate is overridden: the next wave goes out."""
        if self.state != PAUSED:
            raise TransitionError(f"rollout {self.id} is {self.state}; only a paused one resumes")
        w = self.wave
        if w.state == "failed":
            w.state = "overridden"
            self._move(now, RUNNING, f"resumed by {by}: wave {w.index}'s failures accepted")
            self._advance(now, f"wave {w.index} overridden by {by}")
        else:
            self._move(now, RUNNING, f"resumed by {by}")

    def abort(self, now: float, by: str, *, rollback: bool) -> dict[str, dict[str, Any] | None]:
        """Stop: no further wave goes out. With `rollback`, returns device -> previous bundle
        for every device already pointed at this rollout's bundle (the caller restores it)."""
        if self.state not in ACTIVE_STATES:
            raise TransitionError(f"rollout {self.id} is already {self.state}")
        for w in self.waves:
            if w.state == "pending":
                w.state = "cancelled"
        restore: dict[str, dict[str, Any] | None] = {}
        if rollback:
            for w in self.waves:
                if w.dispatched_at is not None:
                    restore.update(w.previous)
        what = f"; {len(restore)} device(s) to roll back" if rollback else ""
        self._move(now, ABORTED, f"aborted by {by}{what}")
        return restore

    def join(self, device_id: str, now: float, previous: Mapping[str, Any] | None = None) -> int:
        """Add a device that joined the rollout's target while it runs to the current
        wave (the last one, once the others went out); returns the wave. A wave already
        dispatched records `previous` (the device's desired bundle before the caller
        pointed it at this one) and gives the device its own health window."""
        if self.state not in (RUNNING, PAUSED):
            raise TransitionError(f"rollout {self.id} is {self.state}; no device joins it")
        for w in self.waves:
            if w.has(device_id):
                return w.index
        w = self.wave
        w.device_ids.append(device_id)
        w.joined.append(device_id)
        if w.dispatched_at is not None:
            w.previous[device_id] = dict(previous) if previous else None
            if w.deadline is not None:
                w.deadline = max(w.deadline, now + self.spec.health_window_s)
        self.note(now, f"{device_id} joined wave {w.index}")
        return w.index

    def skip(self, device_id: str, now: float, reason: str) -> bool:
        """Stop waiting for a device of a dispatched wave that has no outcome yet (the
        offline policy): it no longer holds its wave nor counts as a failure. True if
        it was newly skipped."""
        for w in self.waves:
            if w.has(device_id) and w.dispatched_at is not None:
                if device_id in w.outcomes or device_id in w.skipped:
                    return False
                w.held.pop(device_id, None)
                w.skipped[device_id] = {"at": now, "reason": reason}
                self.note(now, f"{device_id} skipped in wave {w.index}: {reason}")
                return True
        return False

    def note(self, now: float, reason: str) -> None:
        """Record an event that is not a state change (e.g. rollback done, hints missed)."""
        self.history.append({"at": now, "from": self.state, "to": self.state, "reason": reason})

    # ------------------------------------------------------------------ queries
    def dispatched_devices(self) -> Iterable[tuple[Wave, str]]:
        for w in self.waves:
            if w.dispatched_at is not None:
                for d in w.waiting:
                    yield w, d
