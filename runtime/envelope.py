"""The safety envelope around a policy: what goes in must look like what it was trained
on, what comes out must be finite, inside the bounds and change slowly enough.

Every intervention is counted with its reason (`Reason`) in a shared counter, so the
loop's metrics say *why* the robot did not get the policy's action.

Hot-path cost matters (the whole tick may cost at most 1.5x a bare
inference), so the checks use a few preallocated numpy ufunc calls on the fast path
and only classify *what* went wrong on the slow path. Infinite declared bounds are
replaced by float32's largest finite value, so one bounds test also rejects NaN and
±Inf (every comparison with NaN is false).
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from runtime.manifest import ControlSpec, IOSpec

__all__ = ["Reason", "SafetyEnvelope"]

F32 = npt.NDArray[np.float32]
_FMAX = float(np.finfo(np.float32).max)
_F32_DTYPE = np.dtype(np.float32)


class Reason(StrEnum):
    """Why the envelope (or the loop) intervened. The values are wire names."""

    OBS_TYPE = "obs_type"
    OBS_SHAPE = "obs_shape"
    OBS_DTYPE = "obs_dtype"
    OBS_NONFINITE = "obs_nonfinite"
    OBS_OUT_OF_BOUNDS = "obs_out_of_bounds"
    ACTION_NONFINITE = "action_nonfinite"
    ACTION_CLAMPED = "action_clamped"
    ACTION_RATE_LIMITED = "action_rate_limited"
    POLICY_ERROR = "policy_error"
    DEADLINE_OVERRUN = "deadline_overrun"
    WATCHDOG = "watchdog"
    ADAPTER_TIMEOUT = "adapter_timeout"
    ADAPTER_ERROR = "adapter_error"


# Reasons after which the robot got the fallback action instead of a (filtered) policy action.
FALLBACK_REASONS = frozenset(
    {
        Reason.OBS_TYPE,
        Reason.OBS_SHAPE,
        Reason.OBS_DTYPE,
        Reason.OBS_NONFINITE,
        Reason.OBS_OUT_OF_BOUNDS,
        Reason.ACTION_NONFINITE,
        Reason.POLICY_ERROR,
        Reason.DEADLINE_OVERRUN,
        Reason.WATCHDOG,
    }
)


def _finite_bounds(values: list[float]) -> F32:
    arr = np.asarray(values, dtype=np.float64)
    return np.clip(np.nan_to_num(arr, posinf=_FMAX, neginf=-_FMAX), -_FMAX, _FMAX).astype(
        np.float32
    )


class SafetyEnvelope:
    """Checks observations and filters actions for one manifest.

    `counts` is shared with the loop's counters, so interventions of every policy the
    loop ran add up in one place.
    """

    def __init__(
        self, io: IOSpec, control: ControlSpec, counts: Counter[str] | None = None
    ) -> None:
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.obs_dim = io.obs_dim
        self.action_dim = io.action_dim
        self._obs_shape = (io.obs_dim,)
        lo = np.asarray(io.obs_low, dtype=np.float64)
        hi = np.asarray(io.obs_high, dtype=np.float64)
        span = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
        margin = control.obs_margin * span
        self._obs_lo = _finite_bounds(list(lo - margin))
        self._obs_hi = _finite_bounds(list(hi + margin))
        self.action_low = _finite_bounds(io.action_low)
        self.action_high = _finite_bounds(io.action_high)
        self.max_delta = control.max_action_delta
        self._fallback = control.fallback
        safe = control.safe_action if control.safe_action is not None else [0.0] * self.action_dim
        if len(safe) != self.action_dim:
            raise ValueError(
                f"control.safe_action has {len(safe)} values; the action has {self.action_dim}"
            )
        self._safe = np.clip(np.asarray(safe, np.float32), self.action_low, self.action_high)
        self._zero = np.clip(
            np.zeros(self.action_dim, np.float32), self.action_low, self.action_high
        )
        # Each check writes its comparisons into one preallocated bool buffer and
        # compares the buffer's bytes with all-True: ~4x cheaper than `.all()` here.
        n, m = self.obs_dim, self.action_dim
        self._obuf = np.empty(2 * n, bool)
        self._ob_lo, self._ob_hi = self._obuf[:n], self._obuf[n:]
        self._o_true = np.ones(2 * n, bool).tobytes()
        self._abuf = np.empty(2 * m, bool)
        self._ab_hi, self._ab_lo = self._abuf[:m], self._abuf[m:]
        self._a_true = np.ones(2 * m, bool).tobytes()
        self._act_shape = (m,)
        # With a rate limit, one subtract yields both [raw - 0, raw - previous], checked
        # against [[action bounds], [±max_action_delta]]: 3 ufunc calls instead of 5.
        # Row 1 of `_z` is `prev`, the previous-action buffer the loop writes each tick.
        self._z = np.zeros((2, m), np.float32)
        self.prev: F32 = self._z[1]
        """The loop's previous action lives here (no copy before the rate-limit check)."""
        np.copyto(self.prev, self.initial_action)
        md = np.float32(self.max_delta or 0.0)
        self._d2 = np.empty((2, m), np.float32)
        self._hi2 = np.stack([self.action_high, np.full(m, md, np.float32)])
        self._lo2 = np.stack([self.action_low, np.full(m, -md, np.float32)])
        self._b2 = np.empty((2, 2, m), bool)
        self._b2_hi, self._b2_lo = self._b2[0], self._b2[1]
        self._b2_true = np.ones(4 * m, bool).tobytes()

    @property
    def initial_action(self) -> F32:
        """The action before the first tick: the fallback with nothing to hold."""
        return (self._safe if self._fallback == "safe" else self._zero).copy()

    def check_observation(self, obs: object) -> Reason | None:
        """None if `obs` may be fed to the policy, else the reason (also counted)."""
        if type(obs) is not np.ndarray:
            return self._count(Reason.OBS_TYPE)
        if obs.shape != self._obs_shape:
            return self._count(Reason.OBS_SHAPE)
        if obs.dtype is not _F32_DTYPE:  # identity: 3x cheaper than ==; native order only
            return self._count(Reason.OBS_DTYPE)
        np.greater_equal(obs, self._obs_lo, out=self._ob_lo)
        np.less_equal(obs, self._obs_hi, out=self._ob_hi)
        if self._obuf.tobytes() == self._o_true:
            return None
        if not np.isfinite(obs).all():
            return self._count(Reason.OBS_NONFINITE)
        return self._count(Reason.OBS_OUT_OF_BOUNDS)

    def filter_action(self, raw: F32, previous: F32, out: F32) -> F32 | None:
        """The action to actuate for the policy's `raw` output.

        Returns `raw` itself when it passes untouched, `out` holding a repaired copy
        when it had to be clamped to the bounds or limited to `max_action_delta` from
        `previous` (both counted), or None when `raw` is unusable (wrong size, NaN,
        Inf): the caller then actuates `fallback(previous)`.
        """
        if raw.shape != self._act_shape:
            self._count(Reason.ACTION_NONFINITE)
            return None
        if self.max_delta is None:
            np.less_equal(raw, self.action_high, out=self._ab_hi)
            np.greater_equal(raw, self.action_low, out=self._ab_lo)
            if self._abuf.tobytes() == self._a_true:
                return raw
        else:
            if previous is not self.prev:
                np.copyto(self.prev, previous)
            d = np.subtract(raw, self._z, out=self._d2)
            np.less_equal(d, self._hi2, out=self._b2_hi)
            np.greater_equal(d, self._lo2, out=self._b2_lo)
            if self._b2.tobytes() == self._b2_true:
                return raw
        return self._repair(raw, previous, out)

    def _repair(self, raw: F32, previous: F32, out: F32) -> F32 | None:
        if not np.isfinite(raw).all():
            self._count(Reason.ACTION_NONFINITE)
            return None
        np.minimum(raw, self.action_high, out=out)
        np.maximum(out, self.action_low, out=out)
        if not np.array_equal(out, raw):
            self._count(Reason.ACTION_CLAMPED)
        if self.max_delta is not None:
            lo = np.maximum(previous - self.max_delta, self.action_low)
            hi = np.minimum(previous + self.max_delta, self.action_high)
            if (out < lo).any() or (out > hi).any():
                # Move at most max_delta per element towards the policy's action.
                np.clip(out, lo, hi, out=out)
                self._count(Reason.ACTION_RATE_LIMITED)
        return out

    def fallback(self, previous: F32) -> F32:
        """The manifest's fallback action: hold the last action, zero, or the safe vector.

        Not rate-limited: the fallback is the integrator's declared safe response.
        """
        if self._fallback == "hold":
            if previous.shape == self._zero.shape and np.isfinite(previous).all():
                return previous.copy()
            return self._zero.copy()
        if self._fallback == "safe":
            return self._safe.copy()
        return self._zero.copy()

    def _count(self, reason: Reason) -> Reason:
        self.counts[reason.value] += 1
        return reason
