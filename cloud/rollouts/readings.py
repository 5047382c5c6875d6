"""What the soak judges, read from the plane's store in one go per decision: the
robots' telemetry counters and loop latency, their error events, and the shadow
action divergence their update events reported for the rollout's bundle.

The divergence travels in the detail of the update event that follows a passed shadow
run (``shadow N ticks: max divergence X (…)``, written by the agent); an event of
another bundle, or one whose detail does not carry it, reports none.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cloud.rollouts.outcomes import same_bundle
from cloud.rollouts.soak import Readings, Sample
from cloud.store import EventRecord, Store

__all__ = ["NOT_ERRORS", "error_event", "readings", "shadow_divergence"]

# Reason codes of events that are no error: a step that succeeded, a hint or an
# update the robot rightly left alone.
NOT_ERRORS = frozenset({"", "OK", "HINT_IGNORED", "NOT_NEWER"})
_SHADOW = re.compile(r"\bshadow \d+ ticks: max divergence ([0-9][0-9.]*(?:e[+-]?\d+)?)\b")


def shadow_divergence(detail: str) -> float | None:
    """The max action divergence a passed shadow run's summary reports, else None."""
    m = _SHADOW.search(detail)
    if m is None:
        return None
    try:
        value = float(m.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def error_event(ev: EventRecord) -> bool:
    return ev.reason_code not in NOT_ERRORS


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def readings(
    store: Store,
    device_ids: Sequence[str],
    start: float,
    end: float,
    bundle: Mapping[str, Any],
) -> Readings:
    """The readings of `device_ids` from `start` to `end` (epoch seconds): one
    telemetry query and one event query, whatever the number of robots."""
    lo, hi = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (start, end))
    samples: dict[str, list[Sample]] = {}
    window = store.telemetry_window(device_ids, lo, hi, extra_keys=("ticks", "deadline_misses"))
    for d, pts in window.items():
        samples[d] = [
            Sample(
                at=p.at.timestamp(),
                ticks=_count((p.extra or {}).get("ticks")),
                misses=_count((p.extra or {}).get("deadline_misses")),
                interventions=int(p.safety_interventions),
                latency_p99_ms=float(p.loop_p99_ms)
                if math.isfinite(p.loop_p99_ms) and p.loop_p99_ms > 0
                else 0.0,
            )
            for p in pts
        ]
    errors: dict[str, list[float]] = {}
    shadow: dict[str, list[tuple[float, float]]] = {}
    for d, evs in store.events_window(device_ids, lo, hi).items():
        errors[d] = [ev.at.timestamp() for ev in evs if error_event(ev)]
        shadow[d] = [
            (ev.at.timestamp(), value)
            for ev in evs
            if ev.kind == "update"
            and ev.bundle is not None
            and same_bundle(ev.bundle, bundle)
            and (value := shadow_divergence(ev.detail)) is not None
        ]
    return Readings(samples, errors, shadow)
