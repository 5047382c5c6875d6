"""From campaign evidence to a verdict: per-task paired TOST, Holm across tasks, gates.

Pure code. The verdict rule:

- any failed validity gate → ``not_attested``;
- else every task equivalent on its Holm-adjusted TOST p-value → ``attested``
  (Holm is the conservative basis; the intersection–union rule "every raw p ≤ α"
  is reported beside it, Berger 1982);
- else, if some task's (1 − 2α) interval lies narrow enough to decide and still
  leaves the margin → ``not_attested``;
- else (the intervals are wider than the margin band) → ``underpowered``: not
  evidence against the student, and never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cloud.attest import stats
from cloud.attest.gates import Gate, TaskEvidence

__all__ = ["Analysis", "Verdict", "analyse"]

Verdict = Literal["attested", "not_attested", "underpowered"]


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    alpha: float
    tasks: list[dict[str, Any]]
    gates: list[Gate]
    aggregate: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "alpha": self.alpha,
            "tasks": self.tasks,
            "gates": [g.to_dict() for g in self.gates],
            "aggregate": self.aggregate,
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _task_stats(t: TaskEvidence, alpha: float) -> tuple[dict[str, Any], stats.TostResult | None]:
    pairs = sorted(set(t.student) & set(t.teacher) & set(t.planned_seeds))
    s = np.array([t.student[k].ret for k in pairs], dtype=np.float64)
    te = np.array([t.teacher[k].ret for k in pairs], dtype=np.float64)
    record: dict[str, Any] = {
        "name": t.name,
        "n_pairs": len(pairs),
        "n_planned": len(t.planned_seeds),
        "seeds": list(t.planned_seeds),
        "episode_length": t.episode_length,
        "margin": {
            "low": t.margin.low,
            "high": t.margin.high,
            "fixed_at": t.margin.fixed_at.isoformat(),
            "source": t.margin.source,
        },
        "calibration": {
            "seeds": list(t.calibration_seeds),
            "teacher_mean": t.teacher_reference_mean,
            "random_mean": t.random_reference_mean,
            "reference_return": t.reference_return,
        },
        "student_returns": s.tolist(),
        "teacher_returns": te.tolist(),
    }
    try:
        paired = stats.tost_paired(s, te, t.margin.low, t.margin.high, alpha)
    except stats.StatsError as exc:
        record["error"] = str(exc)
        return record, None
    d = s - te
    sd = float(np.std(d, ddof=1))
    record.update(
        student_mean=float(s.mean()),
        teacher_mean=float(te.mean()),
        mean_diff=paired.mean_diff,
        sd_diff=sd,
        se=paired.se,
        df=paired.df,
        t_lower=paired.t_lower,
        p_lower=paired.p_lower,
        t_upper=paired.t_upper,
        p_upper=paired.p_upper,
        p_tost=paired.p,
        ci={"level": 1 - 2 * alpha, "low": paired.ci.low, "high": paired.ci.high},
        power_at_zero=stats.tost_power(sd, len(pairs), t.margin.low, t.margin.high, alpha),
    )
    try:
        record["pairs_for_80_power"] = stats.required_pairs(
            sd, t.margin.low, t.margin.high, alpha, 0.8
        )
    except stats.StatsError:
        record["pairs_for_80_power"] = None
    try:  # reported beside: the unpaired design ignores the shared initial states
        welch = stats.tost_welch(s, te, t.margin.low, t.margin.high, alpha)
        record["welch"] = {
            "p_tost": welch.p,
            "df": _finite(welch.df),
            "ci": {"low": welch.ci.low, "high": welch.ci.high},
        }
    except stats.StatsError as exc:
        record["welch"] = {"error": str(exc)}
    iqm_s, ci_s = stats.iqm_bootstrap_ci([s], reps=1000, seed=1)
    iqm_t, ci_t = stats.iqm_bootstrap_ci([te], reps=1000, seed=2)
    iqm_d, ci_d = stats.iqm_bootstrap_ci([d], reps=1000, seed=3)
    record["iqm"] = {
        "student": iqm_s,
        "student_ci": [ci_s.low, ci_s.high],
        "teacher": iqm_t,
        "teacher_ci": [ci_t.low, ci_t.high],
        "difference": iqm_d,
        "difference_ci": [ci_d.low, ci_d.high],
    }
    return record, paired


def analyse(tasks: Sequence[TaskEvidence], gates: Sequence[Gate], alpha: float = 0.05) -> Analysis:
    records: list[dict[str, Any]] = []
    results: list[stats.TostResult | None] = []
    for t in tasks:
        record, result = _task_stats(t, alpha)
        records.append(record)
        results.append(result)
    computed = [i for i, r in enumerate(results) if r is not None]
    adjusted = stats.holm([results[i].p for i in computed])  # type: ignore[union-attr]
    outcomes: list[stats.Equivalence | None] = [None] * len(results)
    for i, p_adj in zip(computed, adjusted, strict=True):
        result = results[i]
        assert result is not None
        records[i]["p_holm"] = float(p_adj)
        outcomes[i] = stats.classify(result, float(p_adj))
        records[i]["outcome"] = outcomes[i]
    for i, r in enumerate(results):
        if r is None:
            records[i]["outcome"] = "not_computed"

    iut = (
        bool(computed)
        and len(computed) == len(results)
        and all(
            results[i].p <= alpha  # type: ignore[union-attr]
            for i in computed
        )
    )
    if not tasks or any(g.failed for g in gates) or len(computed) != len(results):
        verdict: Verdict = "not_attested"
    elif all(o == "equivalent" for o in outcomes):
        verdict = "attested"
    elif any(o == "not_equivalent" for o in outcomes):
        verdict = "not_attested"
    else:
        verdict = "underpowered"

    aggregate: dict[str, Any] = {"intersection_union_all_raw_p_le_alpha": iut}
    strata_s: list[list[float]] = []
    strata_t: list[list[float]] = []
    for t in tasks:
        span = t.teacher_reference_mean - t.random_reference_mean
        if not (math.isfinite(span) and span > 0):
            strata_s = []
            break
        pairs = sorted(set(t.student) & set(t.teacher) & set(t.planned_seeds))
        if not pairs:
            strata_s = []
            break
        # Normalised score: 0 = random, 1 = the teacher's calibration mean.
        strata_s.append([(t.student[k].ret - t.random_reference_mean) / span for k in pairs])
        strata_t.append([(t.teacher[k].ret - t.random_reference_mean) / span for k in pairs])
    if strata_s and all(np.all(np.isfinite(x)) for x in strata_s + strata_t):
        iqm_s, ci_s = stats.iqm_bootstrap_ci(strata_s, reps=1000, seed=4)
        iqm_t, ci_t = stats.iqm_bootstrap_ci(strata_t, reps=1000, seed=5)
        aggregate["normalised_iqm"] = {
            "student": iqm_s,
            "student_ci": [ci_s.low, ci_s.high],
            "teacher": iqm_t,
            "teacher_ci": [ci_t.low, ci_t.high],
            "method": "stratified bootstrap over tasks, 1000 replicates, 95% percentile CI",
        }
    return Analysis(verdict, alpha, records, list(gates), aggregate)
