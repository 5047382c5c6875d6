"""Per-device retries in a rollout wave: exponential backoff with jitter, bounded tries.

Pure: no I/O. The caller passes the clock (``now``, epoch seconds) and a uniform random
number ``u`` in [0, 1) for the jitter, and re-points a device at the bundle when its
retry is due (``due``, then ``redispatched``).

A device whose update fails for a reason it can get past on its own (a download or a
TUF refresh that failed, a robot that never allowed the switch, an agent or runtime
that restarted or did not answer) is pointed at the bundle again after a delay instead
of counting as a failure of its wave. Try ``n`` (the first is try 1) waits
``min(retry_max_s, retry_base_s * 2 ** (n - 1))``, of which a random half is jitter, so a
wave's failed devices do not come back all at once. After ``max_tries`` tries, or on a
failure that is the bundle's own (it does not verify, its shadow run or health window
failed, ...), the outcome is final and counts against ``max_failure_fraction`` like any
other; retries are shown apart. While a device waits for its retry its wave waits too,
and its wave's deadline moves to the retry plus the health window.

The policy lives in ``RolloutSpec.gates["retry"]``, each device's tries in
``Rollout.gates["retries"]``; both round-trip through JSON with the rest of the rollout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloud.rollouts.engine import RUNNING, Rollout, SpecError
from protos.lifecycle import Outcome, Reason

__all__ = [
    "RETRYABLE",
    "RetryPolicy",
    "due",
    "on_failure",
    "redispatched",
    "retry_policy",
    "scheduled",
    "since",
    "tries",
]

#: Failures a robot can get past on a later try; every other one is the bundle's own.
RETRYABLE = frozenset(
    {
        Reason.PLANE_UNREACHABLE,
        Reason.TUF_REFRESH_FAILED,
        Reason.DOWNLOAD_FAILED,
        Reason.UNSAFE_TO_SWITCH,
        Reason.DEADLINE_EXCEEDED,
        Reason.AGENT_RESTARTED,
        Reason.RUNTIME_UNAVAILABLE,
    }
)
# An agent's clock may lag the plane's (the driver counts events this much before a
# dispatch): a retry never comes sooner than this after the failure that caused it.
MIN_BASE_S = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    max_tries: int = 1  # 1: no retry
    base_s: float = 30.0
    max_s: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int):
            raise SpecError(f"max_tries = {self.max_tries!r}: must be a whole number")
        if not 1 <= self.max_tries <= 20:
            raise SpecError(f"max_tries = {self.max_tries}: must be in [1, 20]")
        if not (math.isfinite(self.base_s) and self.base_s >= MIN_BASE_S):
            raise SpecError(f"retry_base_s = {self.base_s}: must be at least {MIN_BASE_S:g} s")
        if not (math.isfinite(self.max_s) and self.max_s >= self.base_s):
            raise SpecError(
                f"retry_max_s = {self.max_s}: must be at least retry_base_s ({self.base_s:g})"
            )

    def delay(self, failed_tries: int, u: float) -> float:
        """Seconds before the next try after `failed_tries` failed ones; `u` in [0, 1)."""
        if not 0.0 <= u < 1.0:
            raise ValueError(f"u = {u}: must be in [0, 1)")
        full = min(self.max_s, self.base_s * 2.0 ** min(failed_tries - 1, 60))
        return full / 2 + u * full / 2

    def to_dict(self) -> dict[str, Any]:
        return {"max_tries": self.max_tries, "base_s": self.base_s, "max_s": self.max_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RetryPolicy:
        if not d:
            return cls()
        try:
            return cls(int(d["max_tries"]), float(d["base_s"]), float(d["max_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"gates.retry = {dict(d)!r}: {exc}") from exc


def retry_policy(r: Rollout) -> RetryPolicy:
    return RetryPolicy.from_dict(r.spec.gates.get("retry"))


def _state(r: Rollout) -> dict[str, dict[str, Any]]:
    got = r.gates.get("retries")
    if not isinstance(got, dict):
        got = {}
        r.gates["retries"] = got
    return got


def tries(r: Rollout, device_id: str) -> int:
    """Tries made so far (1 once dispatched, more after retries)."""
    st = (r.gates.get("retries") or {}).get(device_id)
    return int(st.get("tries", 1)) if isinstance(st, dict) else 1


def scheduled(r: Rollout, device_id: str) -> bool:
    """The device waits for a retry (its earlier outcome is not counted)."""
    st = (r.gates.get("retries") or {}).get(device_id)
    return isinstance(st, dict) and st.get("next_at") is not None


def since(r: Rollout, device_id: str, dispatched_at: float) -> float:
    """From when the device's outcome counts: its last (re)dispatch."""
    st = (r.gates.get("retries") or {}).get(device_id)
    return float(st.get("since", dispatched_at)) if isinstance(st, dict) else dispatched_at


def on_failure(
    r: Rollout,
    device_id: str,
    outcome: str,
    reason: str,
    detail: str,
    now: float,
    u: float,
) -> bool:
    """A failure reported for `device_id`: True when a retry is scheduled (the caller
    does not record the outcome), False when the outcome is final."""
    policy = retry_policy(r)
    if outcome not in (Outcome.FAILED, Outcome.ROLLED_BACK) or reason not in RETRYABLE:
        return False
    done = tries(r, device_id)
    if done >= policy.max_tries:
        return False
    wave = next((w for w in r.waves if w.has(device_id)), None)
    if wave is None or device_id in wave.outcomes or wave.dispatched_at is None:
        return False
    wait = policy.delay(done, u)
    st = _state(r).setdefault(device_id, {"tries": done, "since": wave.dispatched_at})
    st["next_at"] = now + wait
    st["last"] = {"outcome": outcome, "reason": reason, "detail": detail, "at": now}
    if wave.deadline is not None:
        wave.deadline = max(wave.deadline, now + wait + r.spec.health_window_s)
    r.note(
        now,
        f"wave {wave.index}: {device_id} {outcome} {reason} on try {done}/{policy.max_tries}; "
        f"try {done + 1} in {wait:.0f} s",
    )
    return True


def due(r: Rollout, now: float) -> list[str]:
    """Devices whose retry is due now (none while the rollout is not running)."""
    if r.state != RUNNING:
        return []
    out = []
    for device_id, st in sorted((r.gates.get("retries") or {}).items()):
        at = st.get("next_at") if isinstance(st, dict) else None
        if at is not None and now >= float(at):
            out.append(device_id)
    return out


def redispatched(r: Rollout, device_ids: list[str], now: float) -> None:
    """The caller pointed `device_ids` at the bundle again."""
    state = _state(r)
    for d in device_ids:
        st = state[d]
        st["tries"] = int(st.get("tries", 1)) + 1
        st["since"] = now
        st["next_at"] = None
        for w in r.waves:
            if w.has(d) and w.deadline is not None:
                w.deadline = max(w.deadline, now + r.spec.health_window_s)
    if device_ids:
        r.note(now, f"retried {len(device_ids)} device(s): {', '.join(device_ids[:10])}")
