"""Check an accelerated session against the CPU FP32 session of the same bundle.

Before a TensorRT or CUDA session (FP16 or not) drives a robot, its actions on the
bundle's calibration observations are compared with those of a CPU FP32 session of
the same model bytes; the largest absolute difference must stay within the
manifest's ``compatibility.accelerated_tolerance``. The runtime runs the check on
every load, so an engine taken from the cache is checked once after it is loaded,
as a freshly built one is; outside the tolerance it runs the CPU session instead
and reports why (`EngineCheck.describe`).

Calibration observations: a fixed-seed sample inside the manifest's observation
bounds (infinite bounds are sampled in [-1, 1]), plus the bounds' midpoint, so the
same bundle is always checked on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from runtime.manifest import BundleManifest

__all__ = ["CPU", "EngineCheck", "calibration_observations", "compare_sessions"]

CPU = "CPUExecutionProvider"
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EngineCheck:
    provider: str
    fp16: bool
    observations: int
    max_deviation: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_deviation)) and self.max_deviation <= self.tolerance

    def describe(self) -> str:
        engine = f"{self.provider}{' FP16' if self.fp16 else ''}"
        verdict = "within" if self.ok else "outside"
        return (
            f"{engine} vs CPU FP32 on {self.observations} calibration observations: max "
            f"|action difference| {self.max_deviation:.3g}, {verdict} the bundle's "
            f"tolerance {self.tolerance:g}"
        )


def calibration_observations(manifest: BundleManifest, n: int = 64, seed: int = 0) -> F32:
    io = manifest.io
    lo = np.nan_to_num(np.asarray(io.obs_low, np.float64), neginf=-1.0, posinf=1.0)
    hi = np.nan_to_num(np.asarray(io.obs_high, np.float64), neginf=-1.0, posinf=1.0)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    rng = np.random.default_rng(seed)
    sample = rng.uniform(lo, hi, size=(n, lo.size))
    return np.vstack([(lo + hi) / 2, sample]).astype(np.float32)


def compare_sessions(
    candidate: Callable[[F32], F32],
    reference: Callable[[F32], F32],
    observations: F32,
    *,
    provider: str,
    fp16: bool,
    tolerance: float,
) -> EngineCheck:
    """Run both `step` functions on every observation; NaN in either counts as infinite."""
    worst = 0.0
    for obs in observations:
        a = np.array(candidate(obs), np.float64)  # copies: sessions reuse their buffers
        b = np.array(reference(obs), np.float64)
        if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
            worst = float("inf")
            break
        worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
    return EngineCheck(provider, fp16, len(observations), worst, tolerance)
