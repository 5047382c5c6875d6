"""The rollout gates at the plane's edge: the published bundle's digests, the plane's
stored attestation for them and its trusted attestation keys, looked up for the pure
checks of `cloud.rollouts.gates`; the create-time admission and its audit entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cloud.rollouts.engine import Rollout, RolloutError, RolloutSpec, plan_waves
from cloud.rollouts.external import DEFAULT_TIMEOUT_S, Asker, allowed, ask, external_gate
from cloud.rollouts.gates import (
    MISSING,
    AttestationCheck,
    GateSpec,
    attestation_decision,
    check_attestation,
    gate_spec,
    hold_for_approval,
    record_attestation,
)
from cloud.rollouts.readings import readings
from cloud.rollouts.retry import RetryPolicy
from cloud.rollouts.soak import Readings, SoakPolicy, soak_gate
from cloud.store import Store
from cloud.store.attestations import AttestationStore

__all__ = ["admit", "bundle_attestation", "record_admission", "wave_may_go"]


def bundle_attestation(
    store: Store, trust_dir: Path, bundle: Mapping[str, Any], now: float
) -> AttestationCheck:
    """Check the parity attestation of the published bundle `bundle` names."""
    import datetime as dt

    from runtime.trust import TrustStore, TrustStoreError

    name, version = str(bundle.get("name", "")), str(bundle.get("version", ""))
    label = f"{name} {version}"
    rec = store.get_bundle(name, version)
    if rec is None:
        return AttestationCheck(MISSING, f"{label}: the bundle is not published")
    found = AttestationStore(store.engine).for_policy(
        rec.policy_sha256, dt.datetime.fromtimestamp(now, dt.UTC)
    )
    try:
        trusted = TrustStore(trust_dir).public_keys("attestation")
    except TrustStoreError as exc:
        return AttestationCheck("untrusted_key", f"{label}: trusted attestation keys: {exc}")
    return check_attestation(
        found.envelope if found is not None else None,
        trusted,
        policy_sha256=rec.policy_sha256,
        root_digest=rec.oms_root_digest,
        bundle=label,
        now=now,
    )


def admit(
    store: Store,
    trust_dir: Path,
    spec: RolloutSpec,
    *,
    allow_unattested: bool,
    approval_waves: tuple[int, ...],
    actor: str,
    now: float,
    retry: RetryPolicy | None = None,
    soak: SoakPolicy | None = None,
    abort_threshold: float | None = None,
    abort_min_robots: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[RolloutSpec, AttestationCheck]:
    """The spec with its gates, and the attestation found; refused (RpcError) when the
    bundle has no valid attestation and no override was asked for, or when an approval
    names a wave the plan does not have."""
    import dataclasses

    import grpc

    from cloud.server._rpc import RpcError

    gates = GateSpec(
        allow_unattested=allow_unattested,
        override_by=actor if allow_unattested else "",
        approval_waves=tuple(sorted(set(approval_waves))),
    )
    try:
        gates.check(len(plan_waves(spec.device_ids, spec.wave_fractions)))
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    check = bundle_attestation(store, trust_dir, spec.bundle, now)
    go, text = attestation_decision(check, gates)
    if not go:
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, text)
    recorded = gates.to_dict()
    if retry is not None:
        recorded["retry"] = retry.to_dict()
    if soak is not None:
        recorded["soak"] = soak.to_dict()
    if abort_threshold is not None:
        recorded["abort_threshold"] = abort_threshold
    if abort_min_robots is not None:
        recorded["abort_min_robots"] = abort_min_robots
    recorded.update(extra or {})
    return dataclasses.replace(spec, gates=recorded), check


def record_admission(store: Store, r: Rollout, check: AttestationCheck, now: float) -> None:
    """Keep the create-time finding; an override is audited and noted in the history."""
    record_attestation(r, 0, check, now)
    if check.ok:
        return
    _, text = attestation_decision(check, gate_spec(r))
    store.audit(
        r.created_by,
        "rollout.unattested_override",
        r.id,
        {
            "bundle": dict(r.spec.bundle),
            "reason": check.reason,
            "detail": check.message,
        },
    )
    r.note(now, f"created without a valid parity attestation: {text}")


def external_check(store: Store, r: Rollout, wave: int, now: float, asker: Asker = ask) -> bool:
    """The rollout's external approval check for `wave` (none configured: passes); a new
    allow is audited once, with the URL and the answer."""
    url = str(r.spec.gates.get("approval_url") or "")
    if not url:
        return True
    timeout_s = float(r.spec.gates.get("approval_timeout_s") or DEFAULT_TIMEOUT_S)
    if not external_gate(r, wave, now, url, timeout_s, asker):
        return False
    st = allowed(r, wave)
    if st is not None and not st.get("audited"):
        store.audit_once(
            f"{r.id}:external:{wave}",
            "rollout-engine",
            "rollout.external_approval",
            r.id,
            {"wave": wave, "url": url, "answer": st.get("last")},
        )
        st["audited"] = True
    return True


def wave_may_go(
    store: Store, trust_dir: Path, r: Rollout, wave: int, now: float, asker: Asker = ask
) -> bool:
    """The gates before wave `wave` goes out: the soak of the wave before it, its
    approval, the external approval check, then the attestation (checked again, since
    it can expire mid-rollout). A failed attestation or a soak regression pauses the
    rollout; an approval not given yet keeps the wave waiting."""

    def measure(ids: Sequence[str], start: float, end: float) -> Readings:
        return readings(store, ids, start, end, r.spec.bundle)

    if not soak_gate(r, wave, now, measure):
        return False
    if hold_for_approval(r, wave, now):
        return False
    if not external_check(store, r, wave, now, asker):
        return False
    check = bundle_attestation(store, trust_dir, r.spec.bundle, now)
    record_attestation(r, wave, check, now)
    go, text = attestation_decision(check, gate_spec(r))
    if not go:
        r.pause(now, f"wave {wave} held: {text}")
        return False
    if not check.ok:
        r.note(now, f"wave {wave}: {text}")
    return True
