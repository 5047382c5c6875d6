"""Gates a rollout's wave passes before it goes out: the parity attestation, approvals.

Pure: no I/O. The caller looks up the attestation envelope and the trusted keys, passes
the clock (``now``, epoch seconds) and carries out the decision (dispatch the wave, or
pause the rollout with the reason given here).

- **Attestation.** A rollout of a bundle needs a valid, unexpired parity attestation
  for the bundle's policy digest and root digest, signed by a trusted attestation key,
  with the verdict ``attested``. It is checked when the rollout is created and again
  before each wave (an attestation can expire mid-rollout). ``allow_unattested`` lets
  the rollout go out without one; the operator who asked is recorded in the spec and
  each wave that goes out that way is noted in the history.
- **Approvals.** A wave listed in ``approval_waves`` waits until an operator approves
  it (``edgeflux rollout approve``). An approval is recorded once per wave with who and
  when; a second approval of the same wave is refused, so it is applied exactly once.

What the gates record lives in ``Rollout.gates`` (status) and the configuration in
``RolloutSpec.gates``; both round-trip through JSON with the rest of the rollout.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloud.rollouts.engine import ACTIVE_STATES, Rollout, SpecError, TransitionError

__all__ = [
    "AttestationCheck",
    "GateSpec",
    "approval_of",
    "approve",
    "attestation_decision",
    "check_attestation",
    "gate_spec",
    "hold_for_approval",
    "record_attestation",
    "waiting_for_approval",
]

ATTESTED = "attested"
MISSING = "missing"


@dataclass(frozen=True)
class GateSpec:
    """The gates asked for when the rollout was created (immutable afterwards)."""

    allow_unattested: bool = False
    override_by: str = ""  # the operator who created the rollout with allow_unattested
    approval_waves: tuple[int, ...] = ()

    def check(self, n_waves: int) -> None:
        """Refuse approval waves the plan does not have, naming the bad one."""
        for i in self.approval_waves:
            if not 0 <= i < n_waves:
                raise SpecError(
                    f"approval_waves: wave {i} does not exist; this rollout has "
                    f"{n_waves} wave(s), numbered 0 to {n_waves - 1}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow_unattested": self.allow_unattested,
            "override_by": self.override_by,
            "approval_waves": list(self.approval_waves),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateSpec:
        waves = d.get("approval_waves") or []
        if not isinstance(waves, list | tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in waves
        ):
            raise SpecError(f"gates.approval_waves = {waves!r}: expected a list of wave numbers")
        return cls(
            allow_unattested=bool(d.get("allow_unattested", False)),
            override_by=str(d.get("override_by", "")),
            approval_waves=tuple(sorted(set(waves))),
        )


def gate_spec(r: Rollout) -> GateSpec:
    return GateSpec.from_dict(r.spec.gates)


# ---------------------------------------------------------------------- attestation
@dataclass(frozen=True)
class AttestationCheck:
    """What the plane found for a bundle: ``reason`` is ``attested``, ``missing``, or the
    verifier's refusal reason (``expired``, ``verdict``, ``untrusted_key``, ...)."""

    reason: str
    message: str
    expires_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason == ATTESTED

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "expires_at": self.expires_at}


def check_attestation(
    envelope: bytes | None,
    trusted: Mapping[str, Any],
    *,
    policy_sha256: str,
    root_digest: str,
    bundle: str,
    now: float,
) -> AttestationCheck:
    """Verify `envelope` (the newest stored attestation for the bundle's policy digest, or
    None) as a robot would: trusted signature, verdict ``attested``, both subjects, not
    expired at `now`. `bundle` names the bundle in the message."""
    from cloud.attest.statement import StatementError, verify_envelope

    if not policy_sha256:
        return AttestationCheck(MISSING, f"{bundle}: the published bundle has no policy digest")
    if envelope is None:
        return AttestationCheck(
            MISSING,
            f"{bundle}: no parity attestation for policy.onnx {policy_sha256[:16]}…; "
            "run a campaign (`edgeflux attest run`) or create the rollout with "
            "--allow-unattested",
        )
    if not math.isfinite(now):
        raise ValueError(f"now = {now}: not a time")
    try:
        checked = verify_envelope(
            envelope,
            dict(trusted),
            policy_sha256=policy_sha256,
            root_digest=root_digest or None,
            now=dt.datetime.fromtimestamp(now, dt.UTC),
        )
    except StatementError as exc:
        return AttestationCheck(exc.reason, f"{bundle}: {exc}")
    expires = checked.expires_at.timestamp()
    return AttestationCheck(
        ATTESTED,
        f"{bundle}: attested by key {checked.key_id[:16]}, valid until "
        f"{checked.expires_at.astimezone(dt.UTC).isoformat(timespec='seconds')}",
        expires,
    )


def attestation_decision(check: AttestationCheck, spec: GateSpec) -> tuple[bool, str]:
    """(go, text): whether a wave may go out on `check`, and what to record."""
    if check.ok:
        return True, check.message
    if spec.allow_unattested:
        return True, (
            f"no valid parity attestation ({check.reason}: {check.message}); "
            f"going out on the override by {spec.override_by or '?'}"
        )
    return False, f"parity attestation gate: {check.reason}: {check.message}"


def record_attestation(r: Rollout, wave: int, check: AttestationCheck, now: float) -> None:
    """Keep the last check (shown by ``rollout get``)."""
    r.gates["attestation"] = {**check.to_dict(), "wave": wave, "at": now}


# ---------------------------------------------------------------------- approvals
def approval_of(r: Rollout, wave: int) -> dict[str, Any] | None:
    """{"by", "at"} when `wave` was approved, else None."""
    got = (r.gates.get("approvals") or {}).get(str(wave))
    return dict(got) if isinstance(got, dict) else None


def waiting_for_approval(r: Rollout, wave: int) -> bool:
    return wave in gate_spec(r).approval_waves and approval_of(r, wave) is None


def approve(r: Rollout, wave: int | None, by: str, now: float) -> int:
    """Record `by`'s approval of `wave` (None: the next wave that waits for one).

    Refused (TransitionError, with the reason) for a rollout that is over, a wave that
    needs no approval, one already dispatched, or one already approved. Returns the wave.
    """
    if r.state not in ACTIVE_STATES:
        raise TransitionError(f"rollout {r.id} is {r.state}; nothing to approve")
    spec = gate_spec(r)
    if wave is None:
        todo = [i for i in spec.approval_waves if i >= r.current and approval_of(r, i) is None]
        if not todo:
            raise TransitionError(f"rollout {r.id} has no wave waiting for approval")
        wave = todo[0]
    if not 0 <= wave < len(r.waves):
        raise TransitionError(
            f"rollout {r.id} has {len(r.waves)} wave(s), numbered 0 to {len(r.waves) - 1}; "
            f"there is no wave {wave}"
        )
    if wave not in spec.approval_waves:
        raise TransitionError(f"wave {wave} of rollout {r.id} does not wait for approval")
    done = approval_of(r, wave)
    if done is not None:
        raise TransitionError(
            f"wave {wave} of rollout {r.id} was already approved by {done.get('by', '?')}"
        )
    if r.waves[wave].state != "pending":
        raise TransitionError(
            f"wave {wave} of rollout {r.id} is {r.waves[wave].state}; only a pending wave "
            "is approved"
        )
    approvals = dict(r.gates.get("approvals") or {})
    approvals[str(wave)] = {"by": by, "at": now}
    r.gates["approvals"] = approvals
    r.gates.pop("waiting", None)
    r.note(now, f"wave {wave} approved by {by}")
    return wave


def hold_for_approval(r: Rollout, wave: int, now: float) -> bool:
    """True while `wave` waits for its approval; the wait is noted once in the history."""
    if not waiting_for_approval(r, wave):
        return False
    if r.gates.get("waiting") != wave:
        r.gates["waiting"] = wave
        r.note(now, f"wave {wave} waits for approval (`edgeflux rollout approve {r.id}`)")
    return True
