"""Dynamic rollouts: devices that join the rollout's target (a label selector) while it
runs, and the policy for devices that stay offline.

- **Joining.** A device that matches the rollout's label selector and is in none of its
  waves (registered, or labelled, after the rollout was created) joins the current wave
  — the last one once the others went out — when the driver next looks (every full
  pass: every few seconds, and after a create or resume). One
  that already has this bundle's sequence or a newer one is left out once, as at
  create. A rollout created from explicit device ids only has no target to join.
- **Offline devices.** ``wait`` (the default): the wave waits for a device that is
  offline, up to its health window, after which it counts as SILENT, a failure.
  ``skip-after=DURATION``: a device offline for DURATION since its wave went out (or
  since it was last seen, if later) is skipped: the wave no longer waits for it and it
  counts as no failure; its desired state stays at the bundle, so it updates when it
  comes back. ``rollout get`` lists the skipped devices with the reason.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloud.rollouts.engine import Rollout, SpecError
from cloud.rollouts.plan import DevicePlan, plan_device
from cloud.store import DeviceRecord, Store, parse_label_selector
from runtime.desired_state import BundleRef

__all__ = ["OfflinePolicy", "newcomers", "offline_policy", "parse_duration", "skip_reason"]

WAIT, SKIP = "wait", "skip"
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``2h`` or ``1d``; SpecError otherwise."""
    m = _DURATION.match(text)
    if m is None:
        raise SpecError(f"{text!r}: expected a duration like 90s, 10m, 2h or 1d")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"{text!r}: a duration must be more than 0")
    return value


@dataclass(frozen=True)
class OfflinePolicy:
    kind: str = WAIT
    after_s: float = 0.0  # skip: seconds offline before the device is skipped

    @classmethod
    def parse(cls, text: str) -> OfflinePolicy:
        """``wait`` or ``skip-after=DURATION`` ("" is ``wait``)."""
        text = text.strip()
        if text in ("", WAIT):
            return cls()
        key, sep, value = text.partition("=")
        if key.strip() != "skip-after" or not sep:
            raise SpecError(
                f"offline_policy = {text!r}: expected wait or skip-after=DURATION (e.g. 30m)"
            )
        try:
            return cls(SKIP, parse_duration(value))
        except SpecError as exc:
            raise SpecError(f"offline_policy: skip-after={value}: {exc}") from exc

    def text(self) -> str:
        return WAIT if self.kind == WAIT else f"skip-after={self.after_s:g}s"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "after_s": self.after_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> OfflinePolicy:
        if not d:
            return cls()
        kind = d.get("kind")
        if kind == WAIT:
            return cls()
        after = d.get("after_s")
        if kind != SKIP or not isinstance(after, int | float) or not after > 0:
            raise SpecError(f"gates.offline = {dict(d)!r}: expected wait or skip with after_s")
        return cls(SKIP, float(after))


def offline_policy(r: Rollout) -> OfflinePolicy:
    return OfflinePolicy.from_dict(r.spec.gates.get("offline"))


def skip_reason(
    policy: OfflinePolicy, dev: DeviceRecord | None, dispatched_at: float, now: float
) -> str | None:
    """Why the device is skipped now under `policy`, or None (it is waited for)."""
    if policy.kind != SKIP:
        return None
    if dev is None:
        return "removed from the fleet"
    if dev.online:
        return None
    seen = dev.last_seen.timestamp() if dev.last_seen is not None else 0.0
    since = max(dispatched_at, seen)
    if now - since < policy.after_s:
        return None
    when = (
        dt.datetime.fromtimestamp(seen, dt.UTC).isoformat(timespec="seconds")
        if dev.last_seen is not None
        else "never"
    )
    return (
        f"offline for {now - since:.0f} s (skip-after={policy.after_s:g}s; last seen "
        f"{when}); it updates when it comes back"
    )


def newcomers(store: Store, r: Rollout, bundle: BundleRef) -> list[DevicePlan]:
    """Devices matching the rollout's label selector that none of its waves holds and
    that were not left out before, each with its plan (``already newer`` ones are left
    out by the caller)."""
    if not r.spec.label_selector:
        return []
    labels = parse_label_selector(r.spec.label_selector)
    known = {d for w in r.waves for d in w.device_ids}
    known.update((r.gates.get("left_out") or {}).keys())
    out: list[DevicePlan] = []
    after = ""
    while True:
        page = store.list_devices(labels, limit=1000, after=after, with_total=False)
        out += [plan_device(d, bundle) for d in page.devices if not d.revoked and d.id not in known]
        if not page.next_after:
            return out
        after = page.next_after
