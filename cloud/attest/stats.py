"""Equivalence statistics for parity attestation: pure functions over arrays, no I/O.

Everything here works on the *return scale* (differences in return units, margins in
return units), never on log-ratios: Pendulum returns are negative, and a ratio of
negative returns is meaningless.

- TOST (Schuirmann 1987): margins Δ_L < 0 < Δ_U fixed before evaluation.
  Paired: d_i = s_i − t_i, SE = s_d/√n, ν = n − 1.
  Welch: SE = √(s_S²/n_S + s_T²/n_T), ν from Welch–Satterthwaite.
  t_L = (d̄ − Δ_L)/SE, p_L = 1 − F_ν(t_L); t_U = (d̄ − Δ_U)/SE, p_U = F_ν(t_U);
  p = max(p_L, p_U), equivalent at level α ⇔ the (1 − 2α) CI lies inside (Δ_L, Δ_U).
  The t distribution is used at every n (a normal approximation is anti-conservative
  at small n), and a zero standard error raises instead of producing p = 0.
- Holm (1979) step-down: sort p ascending, p̃_(i) = max_{j≤i} min(1, (m − j + 1) p_(j)).
- IQM with stratified-bootstrap CIs (Agarwal et al. 2021, "rliable").
- Power of paired TOST by the shifted-t approximation (see `tost_power`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as _sps

__all__ = [
    "Equivalence",
    "Interval",
    "StatsError",
    "TostResult",
    "classify",
    "holm",
    "iqm",
    "iqm_bootstrap_ci",
    "required_pairs",
    "tost_paired",
    "tost_power",
    "tost_welch",
]

ArrayLike = Sequence[float] | npt.NDArray[np.floating[Any]]
Equivalence = Literal["equivalent", "not_equivalent", "underpowered"]


class StatsError(ValueError):
    """The inputs cannot support the requested statistic (too few values, zero spread, NaN)."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class TostResult:
    """One two one-sided tests result; `ci` is the (1 − 2α) interval of the mean difference."""

    design: Literal["paired", "welch"]
    n: int  # pairs (paired) or n_student + n_teacher (Welch)
    mean_diff: float
    se: float
    df: float
    margin: Interval
    alpha: float
    t_lower: float
    p_lower: float
    t_upper: float
    p_upper: float
    ci: Interval

    @property
    def p(self) -> float:
        """The TOST p-value: the larger of the two one-sided p-values."""
        return max(self.p_lower, self.p_upper)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["p"] = self.p
        return out


def _vector(name: str, values: ArrayLike, minimum: int) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise StatsError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size < minimum:
        raise StatsError(f"{name} has {arr.size} values; at least {minimum} are needed")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise StatsError(f"{name}[{bad}] is {arr[bad]}: every value must be finite")
    return arr


def _margin(low: float, high: float) -> Interval:
    if not (math.isfinite(low) and math.isfinite(high)) or not low < 0 < high:
        raise StatsError(
            f"equivalence margin ({low}, {high}) must satisfy low < 0 < high "
            "(a band around zero difference, in return units)"
        )
    return Interval(float(low), float(high))


def _alpha(alpha: float) -> float:
    if not 0 < alpha < 0.5:
        raise StatsError(f"alpha must be in (0, 0.5), got {alpha}")
    return float(alpha)


def _tost(
    design: Literal["paired", "welch"],
    n: int,
    mean: float,
    se: float,
    df: float,
    margin: Interval,
    alpha: float,
) -> TostResult:
    if not se > 0 or not math.isfinite(se):
        # A zero standard error would give t = ±inf and p = 0: two seeds with a constant
        # gap would "pass". Refuse instead; the gates report it as a failed gate.
        raise StatsError(f"standard error is {se}: the differences have no spread")
    t_l = (mean - margin.low) / se
    t_u = (mean - margin.high) / se
    dist = _sps.t(df)
    p_l = float(dist.sf(t_l))  # 1 − F(t_L), via the survival function for accuracy
    p_u = float(dist.cdf(t_u))
    q = float(dist.ppf(1.0 - alpha))
    return TostResult(
        design=design,
        n=n,
        mean_diff=mean,
        se=se,
        df=df,
        margin=margin,
        alpha=alpha,
        t_lower=float(t_l),
        p_lower=p_l,
        t_upper=float(t_u),
        p_upper=p_u,
        ci=Interval(mean - q * se, mean + q * se),
    )


def tost_paired(
    student: ArrayLike, teacher: ArrayLike, low: float, high: float, alpha: float = 0.05
) -> TostResult:
    """Paired TOST on d = student − teacher (pairs share their initial state)."""
    s = _vector("student", student, 2)
    t = _vector("teacher", teacher, 2)
    if s.shape != t.shape:
        raise StatsError(f"paired arms differ in length: student {s.size}, teacher {t.size}")
    d = s - t
    n = d.size
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    return _tost("paired", n, float(d.mean()), se, n - 1.0, _margin(low, high), _alpha(alpha))


def tost_welch(
    student: ArrayLike, teacher: ArrayLike, low: float, high: float, alpha: float = 0.05
) -> TostResult:
    """Welch (unequal variances) TOST on mean(student) − mean(teacher)."""
    s = _vector("student", student, 2)
    t = _vector("teacher", teacher, 2)
    vs, vt = float(np.var(s, ddof=1)) / s.size, float(np.var(t, ddof=1)) / t.size
    se = math.sqrt(vs + vt)
    if se > 0:
        # Welch–Satterthwaite degrees of freedom.
        df = (vs + vt) ** 2 / (vs**2 / (s.size - 1) + vt**2 / (t.size - 1))
    else:
        df = float("nan")
    mean = float(s.mean() - t.mean())
    return _tost("welch", s.size + t.size, mean, se, df, _margin(low, high), _alpha(alpha))


def holm(pvalues: ArrayLike) -> npt.NDArray[np.float64]:
    """Holm step-down adjusted p-values, in the input order.

    p̃_(i) = max_{j≤i} min(1, (m − j + 1)·p_(j)) over the ascending order (Holm 1979).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise StatsError("p-values must be a one-dimensional sequence")
    if p.size == 0:
        return p.copy()
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise StatsError(f"p-values must be finite and in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted_sorted = np.maximum.accumulate(scaled)
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out


def classify(result: TostResult, p_adjusted: float | None = None) -> Equivalence:
    """Per-task outcome: equivalent, not equivalent, or underpowered.

    A run whose (1 − 2α) interval is wider than the margin band could not have shown
    equivalence wherever its mean landed: it is reported "underpowered" — never as a
    failure of the student and never as a pass. An interval that lies wholly outside
    the band is "not_equivalent" however wide it is: more pairs could not bring it back.
    """
    p = result.p if p_adjusted is None else p_adjusted
    if p <= result.alpha:
        return "equivalent"
    outside = result.ci.high < result.margin.low or result.ci.low > result.margin.high
    if not outside and result.ci.width >= result.margin.width:
        return "underpowered"
    return "not_equivalent"


def iqm(values: ArrayLike) -> float:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end)."""
    arr = _vector("values", values, 1)
    return float(_sps.trim_mean(arr, 0.25))


def iqm_bootstrap_ci(
    strata: Sequence[ArrayLike],
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, Interval]:
    """IQM over all strata pooled, with a percentile stratified-bootstrap CI.

    Each bootstrap replicate resamples every stratum (task) with replacement at its own
    size, so each task keeps its weight (Agarwal et al. 2021, §A.1).
    """
    arrays = [_vector(f"stratum {i}", x, 1) for i, x in enumerate(strata)]
    if not arrays:
        raise StatsError("no strata given")
    point = iqm(np.concatenate(arrays))
    rng = np.random.default_rng(seed)
    samples = [a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays]
    pooled = np.concatenate(samples, axis=1)
    boots = _sps.trim_mean(pooled, 0.25, axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boots, [tail, 1.0 - tail])
    return point, Interval(float(lo), float(hi))


def tost_power(
    sd: float, n: int, low: float, high: float, alpha: float = 0.05, true_diff: float = 0.0
) -> float:
    """Approximate power of paired TOST with `n` pairs and difference spread `sd`.

    Shifted central-t approximation: the test rejects when t_L ≥ q and t_U ≤ −q with
    q = t_{1−α,ν}, so power ≈ F_ν((Δ_U − δ)/SE − q) + F_ν((δ − Δ_L)/SE − q) − 1,
    clipped at 0 (Chow & Liu, Design and Analysis of Bioequivalence Studies, §5.3).
    """
    margin = _margin(low, high)
    if n < 2 or not sd > 0:
        raise StatsError(f"power needs n ≥ 2 and sd > 0 (got n={n}, sd={sd})")
    se = sd / math.sqrt(n)
    dist = _sps.t(n - 1)
    q = dist.ppf(1.0 - _alpha(alpha))
    upper = dist.cdf((margin.high - true_diff) / se - q)
    lower = dist.cdf((true_diff - margin.low) / se - q)
    return float(max(0.0, upper + lower - 1.0))


def required_pairs(
    sd: float,
    low: float,
    high: float,
    alpha: float = 0.05,
    power: float = 0.8,
    true_diff: float = 0.0,
    max_pairs: int = 100_000,
) -> int:
    """Smallest number of pairs reaching `power` (for planning; see `tost_power`)."""
    if not 0 < power < 1:
        raise StatsError(f"power must be in (0, 1), got {power}")
    lo_n, hi_n = 2, 2
    while tost_power(sd, hi_n, low, high, alpha, true_diff) < power:
        if hi_n >= max_pairs:
            raise StatsError(f"more than {max_pairs} pairs would be needed for power {power}")
        lo_n, hi_n = hi_n, min(hi_n * 2, max_pairs)
    while lo_n < hi_n:  # power is monotone in n: bisect
        mid = (lo_n + hi_n) // 2
        if tost_power(sd, mid, low, high, alpha, true_diff) >= power:
            hi_n = mid
        else:
            lo_n = mid + 1
    return hi_n
