"""What a device's reports say about a rollout's bundle: its outcome, and the action
divergence limit a desired bundle carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloud.rollouts.engine import (
    COMMITTED,
    FAILURE_OUTCOMES,
    HELD,
    HOLD_REASONS,
)
from cloud.rollouts.wire import bundle_ref
from cloud.store import DeviceRecord, EventRecord, Store

__all__ = [
    "CLOCK_SKEW_S",
    "Hold",
    "device_outcome",
    "device_report",
    "report_of",
    "same_bundle",
]

# An agent's clock may lag the plane's: an event stamped this much before the wave's
# dispatch still counts for that wave.
CLOCK_SKEW_S = 2.0


@dataclass(frozen=True)
class Hold:
    """The device's switch waits on the robot: its HELD event's reason, detail, time."""

    reason: str
    detail: str
    at: float


def same_bundle(bundle: Mapping[str, Any] | None, spec_bundle: Mapping[str, Any]) -> bool:
    ref = bundle_ref(bundle)
    return ref is not None and ref.same_bundle(bundle_ref(spec_bundle))


def device_outcome(
    store: Store, device_id: str, spec_bundle: Mapping[str, Any], since: float
) -> tuple[str, str, str] | None:
    """(outcome, reason code, detail) for `device_id` on `spec_bundle` since `since`, or
    None yet — the reason and detail exactly as the device's event carried them."""
    return device_report(store, device_id, spec_bundle, since)[0]


def device_report(
    store: Store, device_id: str, spec_bundle: Mapping[str, Any], since: float
) -> tuple[tuple[str, str, str] | None, Hold | None]:
    """What `device_id` reports on `spec_bundle` since `since`, from one read of its
    update events: its terminal outcome (as :func:`device_outcome`), else the hold it
    waits on — its newest event for this bundle is HELD with a reason that names what
    holds it (an update lock or a closed maintenance window) — else (None, None)."""
    events = store.events(device_id, kind="update", limit=20)
    return report_of(events, store.get_device(device_id), spec_bundle, since)


def report_of(
    events: Sequence[EventRecord],
    dev: DeviceRecord | None,
    spec_bundle: Mapping[str, Any],
    since: float,
) -> tuple[tuple[str, str, str] | None, Hold | None]:
    """:func:`device_report` from what was read already: the device's ``update``
    events (oldest first; older ones than `since` may be among them) and its row."""
    hold: Hold | None = None
    newest = True
    for ev in reversed(events):
        if ev.at.timestamp() < since - CLOCK_SKEW_S:
            break
        if ev.bundle is not None and not same_bundle(ev.bundle, spec_bundle):
            continue
        if newest and ev.state == HELD and ev.reason_code in HOLD_REASONS:
            hold = Hold(ev.reason_code, ev.detail, max(ev.at.timestamp(), since))
        newest = False
        if ev.state not in (COMMITTED, *FAILURE_OUTCOMES):
            continue
        return (ev.state, ev.reason_code, ev.detail), None
    if (
        dev is not None
        and dev.update_state == COMMITTED
        and same_bundle(dev.active_bundle, spec_bundle)
    ):
        return (COMMITTED, "", ""), None
    return None, hold
