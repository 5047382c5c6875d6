"""What pointing devices at a bundle will do, decided before anything is changed.

A robot drops a bundle whose sequence does not exceed the one it has installed
(anti-rollback), so the plane checks first, from what the devices last reported:

- ``will update``    the device's installed sequence is below the bundle's;
- ``already newer``  it has this sequence or a newer one: it would drop the update,
  so it is left out and the plane records why (audit ``push.dropped``);
- ``offline``        it will update, when its agent next polls the desired state.

And a bundle older than the newest one published under its name is refused outright:
robots that took the newer one would drop it, and the others would be downgraded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloud.store import BundleRecord, DeviceRecord, Store
from runtime.desired_state import BundleRef

__all__ = [
    "ALREADY_NEWER",
    "OFFLINE",
    "WILL_UPDATE",
    "DevicePlan",
    "StaleBundleError",
    "check_newest",
    "installed_sequence",
    "plan_devices",
    "record_dropped",
]

WILL_UPDATE = "will update"
ALREADY_NEWER = "already newer"
OFFLINE = "offline"


class StaleBundleError(ValueError):
    """The bundle is older than the newest published one of its name."""


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    outcome: str
    detail: str

    @property
    def receives(self) -> bool:
        """Whether the device is pointed at the bundle."""
        return self.outcome != ALREADY_NEWER


def check_newest(store: Store, rec: BundleRecord) -> None:
    """Refuse a published bundle whose sequence is below the newest of its name."""
    latest = store.latest_bundle(rec.name)
    if latest is not None and rec.sequence < latest.sequence:
        raise StaleBundleError(
            f"{rec.name} {rec.version} has sequence {rec.sequence}, below the published "
            f"{latest.name} {latest.version} (sequence {latest.sequence}); devices that took "
            f"that would drop it. Use {latest.name}@{latest.version}, or publish a new "
            f"version with sequence {latest.sequence + 1} or more"
        )


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError, OverflowError):
        return 0


def installed_sequence(dev: DeviceRecord, name: str) -> int:
    """The newest sequence of `name` the device reported (anti-rollback or active)."""
    seen = [0]
    inv = dev.inventory or {}
    counters = inv.get("anti_rollback")
    if isinstance(counters, dict):
        seen.append(_int(counters.get(name)))
    for active in (dev.active_bundle, inv.get("active_bundle")):
        if isinstance(active, dict) and active.get("name") == name:
            seen.append(_int(active.get("sequence")))
    return max(seen)


def plan_device(dev: DeviceRecord, bundle: BundleRef) -> DevicePlan:
    have = installed_sequence(dev, bundle.name)
    if have >= bundle.sequence:
        return DevicePlan(
            dev.id,
            ALREADY_NEWER,
            f"has {bundle.name} sequence {have}, not below {bundle.sequence}: it would drop "
            f"this update; publish a version with sequence {have + 1} or more",
        )
    if not dev.online:
        seen = dev.last_seen.isoformat(timespec="seconds") if dev.last_seen else "never"
        return DevicePlan(
            dev.id,
            OFFLINE,
            f"last seen {seen}; updates from sequence {have} when its agent next polls",
        )
    return DevicePlan(dev.id, WILL_UPDATE, f"sequence {have} -> {bundle.sequence}")


def plan_devices(store: Store, device_ids: Iterable[str], bundle: BundleRef) -> list[DevicePlan]:
    """One plan per known device, in id order (unknown ids are the caller's check)."""
    plans = []
    for device_id in sorted(set(device_ids)):
        dev = store.get_device(device_id)
        if dev is not None:
            plans.append(plan_device(dev, bundle))
    return plans


def record_dropped(
    store: Store, plans: Iterable[DevicePlan], bundle: BundleRef, actor: str
) -> None:
    """Write an audit entry for each device left out because it is already newer."""
    for p in plans:
        if not p.receives:
            store.audit(
                actor,
                "push.dropped",
                p.device_id,
                {"bundle": bundle.to_dict(), "reason": "NOT_NEWER", "detail": p.detail},
            )
