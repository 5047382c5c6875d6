"""The attestation statistics against statsmodels and scipy, and their refusals."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from cloud.attest import stats

CASES = 1000


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    n = int(rng.integers(3, 120))
    scale = float(10 ** rng.uniform(-1, 3))
    t = rng.normal(rng.uniform(-1500, 0), scale, size=n)
    s = t + rng.normal(rng.normal(0, scale / 3), scale * rng.uniform(0.05, 1.0), size=n)
    low = -float(rng.uniform(0.01, 2.0) * scale)
    high = float(rng.uniform(0.01, 2.0) * scale)
    return s, t, low, high


def test_paired_tost_matches_statsmodels_on_1000_random_cases() -> None:
    rng = np.random.default_rng(20261121)
    for _ in range(CASES):
        s, t, low, high = _random_case(rng)
        ours = stats.tost_paired(s, t, low, high)
        p, lower, upper = ttost_paired(s, t, low, high)
        assert ours.p == pytest.approx(float(p), abs=1e-9, rel=0)
        assert ours.p_lower == pytest.approx(float(lower[1]), abs=1e-9, rel=0)
        assert ours.p_upper == pytest.approx(float(upper[1]), abs=1e-9, rel=0)
        assert ours.t_lower == pytest.approx(float(lower[0]), rel=1e-9)
        assert ours.df == float(lower[2])


def test_welch_tost_matches_statsmodels_unequal_variance_on_1000_random_cases() -> None:
    rng = np.random.default_rng(7)
    for _ in range(CASES):
        s, t, low, high = _random_case(rng)
        t = t[: max(3, int(rng.integers(2, t.size + 1)))] * rng.uniform(0.5, 2.0)
        ours = stats.tost_welch(s, t, low, high)
        p, lower, upper = ttost_ind(s, t, low, high, usevar="unequal")
        assert ours.p == pytest.approx(float(p), abs=1e-9, rel=0)
        assert ours.p_lower == pytest.approx(float(lower[1]), abs=1e-9, rel=0)
        assert ours.p_upper == pytest.approx(float(upper[1]), abs=1e-9, rel=0)
        assert ours.df == pytest.approx(float(lower[2]), rel=1e-9)


def test_holm_matches_statsmodels_holm_on_1000_random_cases(monkeypatch) -> None:
    # statsmodels calls gc.collect() on every multipletests call (≈50 ms under pytest);
    # skipping it changes no result and keeps the 1,000 cases fast.
    monkeypatch.setattr(gc, "collect", lambda *a: 0)
    rng = np.random.default_rng(3)
    for _ in range(CASES):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 1, size=m) ** rng.uniform(0.5, 4)
        if rng.uniform() < 0.2:  # ties are where step-down implementations go wrong
            p[rng.integers(0, m)] = p[0]
        expected = multipletests(p, alpha=0.05, method="holm")[1]
        np.testing.assert_allclose(stats.holm(p), expected, atol=1e-12, rtol=0)


def test_holm_differs_from_statsmodels_default_holm_sidak() -> None:
    p = [0.01, 0.02, 0.03]
    assert stats.holm(p).tolist() == pytest.approx([0.03, 0.04, 0.04])
    assert multipletests(p)[1].tolist() != pytest.approx([0.03, 0.04, 0.04])


# A fixed vector, worked by hand: d = [1, 2, 3, 4, 5] − [1, 1, 1, 1, 1] = [0, 1, 2, 3, 4],
# mean 2, s_d = √2.5, SE = √0.5, ν = 4, margins (−3, 3).
FIXED_S = [1.0, 2.0, 3.0, 4.0, 5.0]
FIXED_T = [1.0, 1.0, 1.0, 1.0, 1.0]


def test_fixed_paired_vector_agrees_with_hand_scipy_and_statsmodels() -> None:
    r = stats.tost_paired(FIXED_S, FIXED_T, -3.0, 3.0, alpha=0.05)
    se = math.sqrt(2.5) / math.sqrt(5)
    assert r.se == pytest.approx(se, rel=1e-12)
    assert r.t_lower == pytest.approx(5.0 / se, rel=1e-12)
    assert r.t_upper == pytest.approx(-1.0 / se, rel=1e-12)
    assert r.p_lower == pytest.approx(float(sps.t(4).sf(5.0 / se)), abs=1e-15)
    assert r.p_upper == pytest.approx(float(sps.t(4).cdf(-1.0 / se)), abs=1e-15)
    # scipy's one-sided paired t-tests against shifted nulls are the same two tests.
    d = np.subtract(FIXED_S, FIXED_T)
    assert r.p_lower == pytest.approx(sps.ttest_1samp(d, -3.0, alternative="greater").pvalue)
    assert r.p_upper == pytest.approx(sps.ttest_1samp(d, 3.0, alternative="less").pvalue)
    assert r.p == pytest.approx(float(ttost_paired(np.array(FIXED_S), np.array(FIXED_T), -3, 3)[0]))
    # 90% CI = 2 ± t_{0.95,4}·SE
    q = float(sps.t(4).ppf(0.95))
    assert (r.ci.low, r.ci.high) == pytest.approx((2 - q * se, 2 + q * se))
    assert r.p > 0.05 and r.ci.high > 3.0  # CI leaves the margin ⇔ not equivalent


def test_fixed_welch_vector_agrees_with_scipy_welch_t() -> None:
    s = [-150.0, -160.0, -155.0, -149.0, -170.0, -152.0]
    t = [-151.0, -158.0, -162.0, -148.0, -150.0]
    r = stats.tost_welch(s, t, -20.0, 20.0)
    shifted = np.asarray(s) + 20.0  # H0: μ_S − μ_T ≤ −20
    expected_l = sps.ttest_ind(shifted, t, equal_var=False, alternative="greater").pvalue
    shifted_u = np.asarray(s) - 20.0  # H0: μ_S − μ_T ≥ 20
    expected_u = sps.ttest_ind(shifted_u, t, equal_var=False, alternative="less").pvalue
    assert r.p_lower == pytest.approx(expected_l, abs=1e-12)
    assert r.p_upper == pytest.approx(expected_u, abs=1e-12)


def test_equivalence_iff_ci_inside_margin() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        s, t, low, high = _random_case(rng)
        r = stats.tost_paired(s, t, low, high, alpha=0.05)
        inside = low < r.ci.low and r.ci.high < high
        if abs(r.p - 0.05) > 1e-9:
            assert (r.p <= 0.05) == inside


def test_zero_standard_error_is_refused_not_passed() -> None:
    # Two seeds with a constant gap: a normal-approximation tool would say p = 0.
    with pytest.raises(stats.StatsError, match="no spread"):
        stats.tost_paired([-150.0, -160.0], [-151.0, -161.0], -10, 10)


@pytest.mark.parametrize(
    ("s", "t", "low", "high", "message"),
    [
        ([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0], -1, 1, r"student\[1\] is nan"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], -1, 1, "differ in length"),
        ([1.0], [1.0], -1, 1, "at least 2"),
        ([1.0, 2.0, 4.0], [1.0, 2.0, 3.0], 0.5, 1, "low < 0 < high"),
        ([1.0, 2.0, 4.0], [1.0, 2.0, 3.0], -1, -0.5, "low < 0 < high"),
    ],
)
def test_paired_tost_refuses_bad_input(s, t, low, high, message) -> None:
    with pytest.raises(stats.StatsError, match=message):
        stats.tost_paired(s, t, low, high)


def test_classify_reports_wide_interval_as_underpowered() -> None:
    rng = np.random.default_rng(5)
    t = rng.normal(-150, 90, size=10)
    s = t + rng.normal(0, 90, size=10)  # spread far beyond a ±5 margin
    r = stats.tost_paired(s, t, -5, 5)
    assert stats.classify(r) == "underpowered"
    t = rng.normal(-150, 90, size=100)
    s = t - 50 + rng.normal(0, 1, size=100)  # precise, and clearly outside the margin
    r = stats.tost_paired(s, t, -5, 5)
    assert stats.classify(r) == "not_equivalent"
    s = t + rng.normal(0, 1, size=100)
    assert stats.classify(stats.tost_paired(s, t, -5, 5)) == "equivalent"
    # Wide, but wholly outside the band: more pairs would not help, so it is a failure.
    s = t - 1000 + rng.normal(0, 90, size=100)
    r = stats.tost_paired(s, t, -5, 5)
    assert r.ci.width >= r.margin.width and r.ci.high < r.margin.low
    assert stats.classify(r) == "not_equivalent"
    # The adjusted p-value decides when given.
    assert stats.classify(stats.tost_paired(s, t, -5, 5), p_adjusted=0.2) != "equivalent"


def test_iqm_trims_a_quarter_from_each_end() -> None:
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)
    assert stats.iqm(list(range(8))) == pytest.approx(float(sps.trim_mean(range(8), 0.25)))


def test_stratified_bootstrap_ci_covers_point_and_keeps_strata_sizes() -> None:
    rng = np.random.default_rng(1)
    strata = [rng.normal(0, 1, 50), rng.normal(10, 1, 10)]
    point, ci = stats.iqm_bootstrap_ci(strata, reps=500, seed=2)
    assert ci.low <= point <= ci.high
    # Stratified: every replicate keeps 10 of 60 values from the second stratum, so the
    # IQM can never be dragged to the second stratum's level.
    assert ci.high < 5


def test_power_matches_simulation_and_sample_size_is_minimal() -> None:
    sd, low, high = 39.0, -15.0, 15.0
    n = stats.required_pairs(sd, low, high, power=0.8)
    assert stats.tost_power(sd, n, low, high) >= 0.8 > stats.tost_power(sd, n - 1, low, high)
    rng = np.random.default_rng(9)
    hits = sum(
        stats.tost_paired(rng.normal(0, sd, n), np.zeros(n), low, high).p <= 0.05
        for _ in range(1000)
    )
    assert abs(hits / 1000 - stats.tost_power(sd, n, low, high)) < 0.05
