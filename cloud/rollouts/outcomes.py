"""What a device's reports say about a rollout's bundle: its outcome, and the action
divergence limit a desired bundle carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud.rollouts.engine import (
    COMMITTED,
    FAILURE_OUTCOMES,
)
from cloud.rollouts.wire import bundle_ref
from cloud.store import Store

__all__ = ["CLOCK_SKEW_S", "device_outcome", "same_bundle"]

# An agent's clock may lag the plane's: an event stamped this much before the wave's
# dispatch still counts for that wave.
CLOCK_SKEW_S = 2.0


def same_bundle(bundle: Mapping[str, Any] | None, spec_bundle: Mapping[str, Any]) -> bool:
    ref = bundle_ref(bundle)
    return ref is not None and ref.same_bundle(bundle_ref(spec_bundle))


def device_outcome(
    store: Store, device_id: str, spec_bundle: Mapping[str, Any], since: float
) -> tuple[str, str, str] | None:
    """(outcome, reason code, detail) for `device_id` on `spec_bundle` since `since`, or
    None yet — the reason and detail exactly as the device's event carried them."""
    for ev in reversed(store.events(device_id, kind="update", limit=20)):
        if ev.at.timestamp() < since - CLOCK_SKEW_S:
            break
        if ev.state not in (COMMITTED, *FAILURE_OUTCOMES):
            continue
        if ev.bundle is not None and not same_bundle(ev.bundle, spec_bundle):
            continue
        return ev.state, ev.reason_code, ev.detail
    dev = store.get_device(device_id)
    if (
        dev is not None
        and dev.update_state == COMMITTED
        and same_bundle(dev.active_bundle, spec_bundle)
    ):
        return COMMITTED, "", ""
    return None
