"""A rollout on the admin API: the engine's `Rollout` as `admin_pb2.Rollout`, and a
create request's retry and soak policies."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.rollouts import retry
from cloud.rollouts.dynamic import offline_policy
from cloud.rollouts.engine import (
    COMMITTED,
    FAILED,
    HELD,
    ROLLED_BACK,
    SILENT,
    Rollout,
    RolloutError,
    check_max_held,
)
from cloud.rollouts.external import external_text
from cloud.rollouts.gates import approval_of, gate_spec
from cloud.rollouts.soak import (
    Figures,
    SoakPolicy,
    abort_min_robots,
    abort_threshold,
    check_abort_threshold,
    soak_policy,
    soak_text,
)
from cloud.server._rpc import RpcError
from protos import admin_pb2, common_pb2
from runtime.desired_state import BundleRef, DesiredStateError

__all__ = [
    "abort_min_robots_of",
    "abort_threshold_of",
    "approval_check_of",
    "bundle_ref",
    "max_held_of",
    "offline_policy_of",
    "retries_pb",
    "retry_policy_of",
    "rollout_to_pb",
    "soak_policy_of",
    "timestamp",
    "with_approval",
]


def timestamp(epoch: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.fromtimestamp(epoch, dt.UTC))
    return ts


def bundle_ref(obj: object) -> BundleRef | None:
    """A stored bundle dict as a reference; None for none or for one that is malformed."""
    try:
        return BundleRef.from_dict(obj)
    except DesiredStateError:
        return None


def divergence_limit(bundle: Mapping[str, Any]) -> float | None:
    gate = bundle.get("gate")
    limit = gate.get("max_action_divergence") if isinstance(gate, dict) else None
    return float(limit) if isinstance(limit, int | float) else None


SOAK_GROUPS = (("wave", "wave"), ("before", "before"), ("baseline", "not yet updated"))


def soak_pb(r: Rollout, wave: int, msg: admin_pb2.RolloutWave) -> admin_pb2.RolloutWave:
    """The wave's soak decision: its verdict and the figures compared."""
    st = (r.gates.get("soak") or {}).get(str(wave))
    if not isinstance(st, dict):
        return msg
    msg.soak_verdict = str(st.get("verdict") or "")
    for key, group in SOAK_GROUPS:
        got = st.get(key)
        if not isinstance(got, dict):
            continue
        f = Figures.from_dict(got)
        msg.soak_figures.append(
            admin_pb2.SoakFigures(
                group=group,
                devices=f.devices,
                reporting=f.reporting,
                miss_rate=f.miss_rate,
                interventions_per_min=f.interventions_per_min,
                latency_p99_ms=f.latency_p99_ms,
                errors_per_robot=f.errors_per_robot,
                divergence=f.divergence,
            )
        )
    return msg


def rollout_to_pb(r: Rollout) -> admin_pb2.Rollout:
    b = bundle_ref(r.spec.bundle) or BundleRef(name="?")
    gates = gate_spec(r)
    waves = [
        soak_pb(
            r,
            w.index,
            with_approval(
                r,
                w.index,
                gates.approval_waves,
                admin_pb2.RolloutWave(
                    index=w.index,
                    device_ids=w.device_ids,
                    state=w.state,
                    committed=w.count(COMMITTED),
                    failed=w.count(FAILED) + w.count(SILENT),
                    rolled_back=w.count(ROLLED_BACK),
                    outcomes=[
                        admin_pb2.DeviceOutcome(
                            device_id=d,
                            outcome=str(o.get("outcome", "")),
                            reason_code=str(o.get("reason", "")),
                            detail=str(o.get("detail", "")),
                        )
                        for d, o in sorted(w.outcomes.items())
                    ],
                ),
            ),
        )
        for w in r.waves
    ]
    return admin_pb2.Rollout(
        id=r.id,
        bundle=common_pb2.BundleRef(name=b.name, version=b.version, sequence=b.sequence),
        state=r.state,
        waves=waves,
        created_at=timestamp(r.created_at),
        created_by=r.created_by,
        reason=r.reason,
        max_action_divergence=divergence_limit(r.spec.bundle),
        allow_unattested=gates.allow_unattested,
        unattested_override_by=gates.override_by,
        attestation=str((r.gates.get("attestation") or {}).get("message", "")),
        max_tries=retry.retry_policy(r).max_tries,
        soak_s=soak_policy(r).soak_s,
        abort_threshold=abort_threshold(r),
        abort=str((r.gates.get("abort") or {}).get("text", "")),
        abort_min_robots=abort_min_robots(r) if abort_threshold(r) is not None else 0,
        soak_thresholds=soak_policy(r).text() if soak_policy(r).soak_s > 0 else "",
        approval_url=str(r.spec.gates.get("approval_url") or ""),
        offline_policy=offline_policy(r).text(),
        max_held_s=r.spec.max_held_s,
    )


def retry_policy_of(request: admin_pb2.CreateRolloutRequest) -> retry.RetryPolicy:
    default = retry.RetryPolicy()
    try:
        return retry.RetryPolicy(
            max_tries=request.max_tries or 1,
            base_s=request.retry_base_s or default.base_s,
            max_s=request.retry_max_s or max(default.max_s, request.retry_base_s),
        )
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def soak_policy_of(request: admin_pb2.CreateRolloutRequest) -> SoakPolicy:
    default = SoakPolicy()
    try:
        return SoakPolicy(
            soak_s=request.soak_s,
            max_miss_rate_increase=(
                request.max_miss_rate_increase
                if request.HasField("max_miss_rate_increase")
                else default.max_miss_rate_increase
            ),
            max_interventions_increase=(
                request.max_interventions_increase
                if request.HasField("max_interventions_increase")
                else default.max_interventions_increase
            ),
            max_latency_p99_ms=(
                request.max_latency_p99_ms if request.HasField("max_latency_p99_ms") else None
            ),
            max_latency_ratio=(
                request.max_latency_ratio
                if request.HasField("max_latency_ratio")
                else default.max_latency_ratio
            ),
            max_divergence=request.max_divergence if request.HasField("max_divergence") else None,
            max_errors_increase=(
                request.max_errors_increase
                if request.HasField("max_errors_increase")
                else default.max_errors_increase
            ),
        )
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def approval_check_of(request: admin_pb2.CreateRolloutRequest) -> dict[str, Any]:
    """The request's external approval check as the spec keeps it ({} for none)."""
    from cloud.rollouts.external import DEFAULT_TIMEOUT_S, check_approval_url, check_timeout

    if not request.approval_url:
        if request.approval_timeout_s:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, "approval_timeout_s without an approval_url"
            )
        return {}
    try:
        return {
            "approval_url": check_approval_url(request.approval_url),
            "approval_timeout_s": check_timeout(request.approval_timeout_s or DEFAULT_TIMEOUT_S),
        }
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def offline_policy_of(request: admin_pb2.CreateRolloutRequest) -> dict[str, Any]:
    """The request's offline policy as the spec keeps it ({} for the default, wait)."""
    from cloud.rollouts.dynamic import OfflinePolicy

    try:
        policy = OfflinePolicy.parse(request.offline_policy)
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    return {} if policy == OfflinePolicy() else {"offline": policy.to_dict()}


def max_held_of(request: admin_pb2.CreateRolloutRequest) -> dict[str, Any]:
    """The request's bound on waiting for held devices as the spec keeps it ({} for the
    default)."""
    if not request.max_held_s:
        return {}
    try:
        return {"max_held_s": check_max_held(request.max_held_s)}
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def abort_min_robots_of(request: admin_pb2.CreateRolloutRequest) -> int | None:
    """The request's minimum robot count for the abort threshold (0: the default)."""
    return int(request.abort_min_robots) or None


def abort_threshold_of(request: admin_pb2.CreateRolloutRequest) -> float | None:
    if not request.HasField("abort_threshold"):
        return None
    try:
        return check_abort_threshold(request.abort_threshold)
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def retries_pb(r: Rollout, device_ids: list[str]) -> list[admin_pb2.DeviceRetry]:
    out = []
    for d in device_ids:
        st = (r.gates.get("retries") or {}).get(d)
        if not isinstance(st, dict):
            continue
        last = st.get("last") or {}
        pb = admin_pb2.DeviceRetry(
            device_id=d,
            tries=int(st.get("tries", 1)),
            outcome=str(last.get("outcome", "")),
            reason_code=str(last.get("reason", "")),
            detail=str(last.get("detail", "")),
        )
        if st.get("next_at") is not None:
            pb.next_at.CopyFrom(timestamp(float(st["next_at"])))
        out.append(pb)
    return out


def with_approval(
    r: Rollout, index: int, approval_waves: tuple[int, ...], pb: admin_pb2.RolloutWave
) -> admin_pb2.RolloutWave:
    pb.retries.extend(retries_pb(r, list(pb.device_ids)))
    pb.soak = soak_text(r, index)
    pb.approval_check = external_text(r, index)
    w = r.waves[index]
    pb.joined.extend(w.joined)
    pb.held.extend(
        admin_pb2.DeviceOutcome(
            device_id=d,
            outcome=HELD,
            reason_code=str(h.get("reason", "")),
            detail=str(h.get("detail", "")),
        )
        for d, h in sorted(w.held.items())
    )
    pb.skipped.extend(
        admin_pb2.DeviceOutcome(device_id=d, outcome="SKIPPED", detail=str(s.get("reason", "")))
        for d, s in sorted(w.skipped.items())
    )
    pb.approval_required = index in approval_waves
    done = approval_of(r, index)
    if done is not None:
        pb.approved_by = str(done.get("by", ""))
        pb.approved_at.CopyFrom(timestamp(float(done.get("at", 0.0))))
    return pb
