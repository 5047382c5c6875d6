"""Creating a rollout: the request checked, each device planned, the spec built.

The bundle must be published and not older than the newest of its name; devices
already at this sequence or newer are left out (and audited as ``push.dropped``),
since they would drop the update; the reply says per device what will happen.
An action-divergence limit given with the request travels in the desired bundle
(``gate``), so each device enforces it in its shadow check.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable

import grpc
from pydantic import ValidationError

from cloud.publish import bundle_ref, desired_bundle
from cloud.rollouts.engine import DEFAULT_HEALTH_WINDOW_S, Rollout, RolloutError, RolloutSpec
from cloud.rollouts.plan import (
    DevicePlan,
    StaleBundleError,
    check_newest,
    plan_devices,
    record_dropped,
)
from cloud.server._rpc import RpcError
from cloud.store import Store, parse_label_selector
from protos import admin_pb2
from runtime.desired_state import GatePolicy

__all__ = ["create_rollout", "plans_to_pb"]


def _gate(request: admin_pb2.CreateRolloutRequest) -> GatePolicy | None:
    if not request.HasField("max_action_divergence"):
        return None
    limit = request.max_action_divergence
    if not (math.isfinite(limit) and limit >= 0):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"max_action_divergence = {limit}: must be a finite number >= 0",
        )
    try:
        return GatePolicy(max_action_divergence=limit)
    except ValidationError as exc:  # pragma: no cover - the check above is the same
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def with_named_window(store: Store, gate: GatePolicy | None, name: str) -> GatePolicy | None:
    """`gate` plus the maintenance window called `name` (none named: `gate` itself)."""
    if not name:
        return gate
    from cloud.store.windows import WindowStore

    found = WindowStore(store.engine).get(name)
    if found is None:
        raise RpcError(
            grpc.StatusCode.NOT_FOUND,
            f"no maintenance window {name!r}; add it with `edgeflux cloud window set {name} ...`",
        )
    fields = gate.model_dump(mode="json", exclude_unset=True) if gate else {}
    fields["windows"] = [found.window.to_dict()]
    return GatePolicy.model_validate(fields)


def _device_ids(store: Store, request: admin_pb2.CreateRolloutRequest) -> set[str]:
    from cloud.push import PushError, resolve_devices

    if not request.device_ids and not request.label_selector:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "give device_ids and/or a label_selector")
    ids: set[str] = set()
    try:
        if request.device_ids:
            ids.update(resolve_devices(store, list(request.device_ids), {}))
        if request.label_selector:
            selector = parse_label_selector(request.label_selector)
            ids.update(resolve_devices(store, (), selector))
    except ValueError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"label_selector: {exc}") from exc
    except PushError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    return ids


def create_rollout(
    store: Store,
    request: admin_pb2.CreateRolloutRequest,
    actor: str,
    admit: Callable[[RolloutSpec], RolloutSpec] | None = None,
) -> tuple[Rollout, list[DevicePlan]]:
    """A new pending rollout (not yet saved) and the plan of every device asked for.

    `admit` (the rollout gates) sees the spec before anything is recorded: it may refuse
    it (RpcError) or return it with its gates."""
    name, version = request.bundle.name, request.bundle.version
    if not name:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "bundle.name is empty")
    rec = store.get_bundle(name, version) if version else store.latest_bundle(name)
    if rec is None:
        raise RpcError(
            grpc.StatusCode.NOT_FOUND,
            f"bundle {name} {version or '(latest)'} is not published; "
            "publish it first (`edgeflux cloud publish`)",
        )
    if request.bundle.sequence and request.bundle.sequence != rec.sequence:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"bundle {name} {rec.version} has sequence {rec.sequence}, "
            f"not {request.bundle.sequence}",
        )
    try:
        check_newest(store, rec)
    except StaleBundleError as exc:
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
    gate = with_named_window(store, _gate(request), request.maintenance_window)
    ids = _device_ids(store, request)
    ref = bundle_ref(rec)
    plans = plan_devices(store, ids, ref)
    receivers = tuple(p.device_id for p in plans if p.receives)
    if not receivers:
        raise RpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"no device would take {rec.name} {rec.version} (sequence {rec.sequence}); "
            + "; ".join(f"{p.device_id} {p.outcome}: {p.detail}" for p in plans),
        )
    try:
        spec = RolloutSpec(
            bundle=desired_bundle(rec, gate).to_dict(),
            device_ids=receivers,
            wave_fractions=tuple(request.wave_fractions) or (1.0,),
            max_failure_fraction=request.max_failure_fraction,
            health_window_s=float(request.health_window_s or DEFAULT_HEALTH_WINDOW_S),
            label_selector=request.label_selector,
        )
    except RolloutError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    if admit is not None:
        spec = admit(spec)
    record_dropped(store, plans, ref, actor)
    rollout_id = f"ro-{uuid.uuid4().hex[:12]}"
    return Rollout.create(rollout_id, spec, now=time.time(), created_by=actor), plans


def plans_to_pb(plans: list[DevicePlan]) -> list[admin_pb2.DevicePlan]:
    return [
        admin_pb2.DevicePlan(device_id=p.device_id, outcome=p.outcome, detail=p.detail)
        for p in plans
    ]
