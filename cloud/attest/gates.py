"""Validity gates: the conditions under which a TOST result means anything at all.

Pure code over the campaign's evidence. Every gate is reported with its outcome and
a reason, passed or not; any failed gate makes the verdict "not_attested" whatever
the p-values say. The gates close the holes seen in a public parity-proof
implementation: missing runs that vanish from the count, a zero
standard error that "passes", margins chosen after looking, a teacher that is no
better than random (anything is "equivalent" to a useless teacher), and evidence
that is not bound to the bytes the robot will run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

__all__ = [
    "Episode",
    "Gate",
    "GateConfig",
    "Margin",
    "StudentRuntime",
    "TaskEvidence",
    "evaluate_gates",
]

Outcome = Literal["pass", "fail", "unknown"]
""""unknown": the evidence to decide is missing; shown as such, never as "pass"."""


@dataclass(frozen=True)
class Gate:
    name: str
    outcome: Outcome
    reason: str
    task: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def failed(self) -> bool:
        return self.outcome == "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Episode:
    """One evaluation episode of one arm. Hashes identify what the episode ran under;
    `normaliser_hash` is the digest of the envelope and normalisation settings the arm
    actually applied (`runtime.kernel.settings_digest`, or the teacher's own)."""

    seed: int
    ret: float
    length: int
    actions_finite: bool
    env_hash: str
    protocol_hash: str
    normaliser_hash: str


@dataclass(frozen=True)
class Margin:
    """The equivalence band in return units, and when and how it was fixed."""

    low: float
    high: float
    fixed_at: datetime
    source: str


@dataclass(frozen=True)
class TaskEvidence:
    name: str
    planned_seeds: tuple[int, ...]
    episode_length: int
    student: Mapping[int, Episode]
    teacher: Mapping[int, Episode]
    margin: Margin
    teacher_reference_mean: float
    """Teacher's mean return on the calibration seeds (not the evaluation seeds)."""
    random_reference_mean: float
    """Uniform-random policy's mean return on the calibration seeds."""
    reference_return: float | None
    """Known good return for the task (e.g. ≈ −150 on Pendulum); None if not declared."""
    calibration_seeds: tuple[int, ...] = ()
    terminates: bool = False
    """True if episodes may end early (then lengths are 1..episode_length)."""
    student_settings: str | None = None
    """Digest of the settings the signed manifest declares for the student arm."""
    teacher_settings: str | None = None
    """Digest of the settings the reference arm must run under (None: its own, any one)."""


@dataclass(frozen=True)
class StudentRuntime:
    """How the student arm ran: through runtime.kernel on the signed file."""

    onnx_sha256: str
    via_session: bool
    provider: str
    precision: str = "float32"


@dataclass(frozen=True)
class GateConfig:
    min_pairs: int = 30
    min_teacher_gain: float = 0.5
    """Teacher − random must be at least this fraction of reference − random."""
    training_seeds: frozenset[int] | None = field(default_factory=frozenset)
    """Seeds used in training and DAgger (from the bundle's provenance); None when the
    provenance records none (the seeds gate is then "unknown")."""


def _gate(name: str, ok: bool | None, reason: str, task: str | None = None) -> Gate:
    return Gate(name, "unknown" if ok is None else "pass" if ok else "fail", reason, task)


def _short(values: Iterable[int], limit: int = 8) -> str:
    items = sorted(values)
    text = ", ".join(str(v) for v in items[:limit])
    return text + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _task_gates(t: TaskEvidence, cfg: GateConfig, evaluation_started_at: datetime) -> list[Gate]:
    gates: list[Gate] = []
    planned = set(t.planned_seeds)
    s_seeds, t_seeds = set(t.student), set(t.teacher)
    missing_s, missing_t = planned - s_seeds, planned - t_seeds
    extra = (s_seeds | t_seeds) - planned
    if len(planned) != len(t.planned_seeds):
        gates.append(_gate("pairs_complete", False, "the plan lists a seed twice", t.name))
    elif missing_s or missing_t or extra:
        parts = []
        if missing_s:
            parts.append(f"student arm lacks seeds {_short(missing_s)}")
        if missing_t:
            parts.append(f"teacher arm lacks seeds {_short(missing_t)}")
        if extra:
            parts.append(f"unplanned seeds {_short(extra)}")
        gates.append(_gate("pairs_complete", False, "; ".join(parts), t.name))
    else:
        gates.append(
            _gate("pairs_complete", True, f"all {len(planned)} planned pairs present", t.name)
        )

    episodes = [*t.student.values(), *t.teacher.values()]
    bad_ret = sorted({e.seed for e in episodes if not math.isfinite(e.ret)})
    bad_act = sorted({e.seed for e in episodes if not e.actions_finite})
    gates.append(
        _gate(
            "finite",
            not bad_ret and not bad_act,
            "all returns and actions finite"
            if not bad_ret and not bad_act
            else f"non-finite returns at seeds [{_short(bad_ret)}], "
            f"non-finite actions at seeds [{_short(bad_act)}]",
            t.name,
        )
    )

    if t.terminates:
        wrong = sorted({e.seed for e in episodes if not 1 <= e.length <= t.episode_length})
        rule = f"1..{t.episode_length} steps"
    else:
        wrong = sorted({e.seed for e in episodes if e.length != t.episode_length})
        rule = f"exactly {t.episode_length} steps"
    gates.append(
        _gate(
            "episode_lengths",
            not wrong,
            f"every episode ran {rule}"
            if not wrong
            else f"seeds [{_short(wrong)}] did not run {rule}",
            t.name,
        )
    )

    pairs = sorted(s_seeds & t_seeds & planned)
    gates.append(
        _gate(
            "min_pairs",
            len(pairs) >= cfg.min_pairs,
            f"{len(pairs)} complete pairs (minimum {cfg.min_pairs})",
            t.name,
        )
    )

    diffs = np.array([t.student[s].ret - t.teacher[s].ret for s in pairs], dtype=np.float64)
    if diffs.size >= 2 and np.all(np.isfinite(diffs)):
        sd = float(np.std(diffs, ddof=1))
        ok = sd > 0 and math.isfinite(sd)
        reason = f"sd of paired differences {sd:.6g}" + ("" if ok else ": zero standard error")
    else:
        ok, reason = False, "fewer than two finite paired differences"
    gates.append(_gate("positive_variance", ok, reason, t.name))

    m = t.margin
    margin_ok = math.isfinite(m.low) and math.isfinite(m.high) and m.low < 0 < m.high
    before = m.fixed_at < evaluation_started_at
    if not margin_ok:
        reason = f"margin ({m.low}, {m.high}) is not a band around zero"
    elif not before:
        reason = (
            f"margin fixed at {m.fixed_at.isoformat()}, not before evaluation started "
            f"({evaluation_started_at.isoformat()})"
        )
    else:
        reason = f"margin ({m.low:.4g}, {m.high:.4g}) fixed {m.fixed_at.isoformat()}: {m.source}"
    gates.append(_gate("margin_prespecified", margin_ok and before, reason, t.name))

    gain = t.teacher_reference_mean - t.random_reference_mean
    if not math.isfinite(gain):
        ok, reason = False, "teacher or random reference return is not finite"
    elif t.reference_return is None:
        ok, reason = False, "no reference return declared (campaign task: reference_return)"
    else:
        span = t.reference_return - t.random_reference_mean
        need = cfg.min_teacher_gain * span
        ok = span > 0 and gain > 0 and gain >= need
        reason = (
            f"teacher − random = {gain:.4g}, needs ≥ {need:.4g} "
            f"({cfg.min_teacher_gain:.0%} of reference − random = {span:.4g})"
        )
    gates.append(_gate("teacher_beats_random", ok, reason, t.name))

    mismatched = []
    for label in ("env_hash", "protocol_hash"):
        values = {getattr(e, label) for e in episodes}
        if len(values) > 1:
            mismatched.append(f"{label} differs ({len(values)} values)")
    for arm, arm_episodes, expected in (
        ("student", t.student.values(), t.student_settings),
        ("reference", t.teacher.values(), t.teacher_settings),
    ):
        applied = {e.normaliser_hash for e in arm_episodes}
        if len(applied) > 1:
            mismatched.append(
                f"the {arm} arm ran under {len(applied)} different envelope/normaliser settings"
            )
        elif expected is not None and applied and applied != {expected}:
            (got,) = applied
            mismatched.append(
                f"the {arm} arm applied envelope/normaliser settings {got[:12]}…, "
                f"its manifest declares {expected[:12]}…"
            )
    gates.append(
        _gate(
            "arms_consistent",
            not mismatched,
            "same environment and protocol in both arms; each arm applied its declared "
            "envelope and normaliser settings"
            if not mismatched
            else "; ".join(mismatched),
            t.name,
        )
    )

    leaked_cal = planned & set(t.calibration_seeds)
    if cfg.training_seeds is None:
        decided: bool | None = None if not leaked_cal else False
        reason = (
            "the bundle's provenance records no training seeds: disjointness from training "
            "cannot be checked"
            + (f"; evaluation seeds also used for calibration [{_short(leaked_cal)}]"
               if leaked_cal else "")
        )  # fmt: skip
        gates.append(_gate("seeds_disjoint", decided, reason, t.name))
        return gates
    leaked_train = planned & cfg.training_seeds
    gates.append(
        _gate(
            "seeds_disjoint",
            not leaked_train and not leaked_cal,
            "evaluation seeds disjoint from training, DAgger and calibration seeds"
            if not leaked_train and not leaked_cal
            else f"evaluation seeds also used for training [{_short(leaked_train)}] "
            f"or calibration [{_short(leaked_cal)}]",
            t.name,
        )
    )
    return gates


def evaluate_gates(
    tasks: Sequence[TaskEvidence],
    runtime: StudentRuntime,
    *,
    policy_sha256: str,
    evaluation_started_at: datetime,
    config: GateConfig | None = None,
) -> list[Gate]:
    """Every gate for every task, plus the campaign-wide ones, each with a reason."""
    cfg = config or GateConfig()
    gates: list[Gate] = []
    if not tasks:
        gates.append(_gate("tasks_declared", False, "the campaign evaluated no task"))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        gates.append(_gate("tasks_declared", False, "task names are not unique"))
    for t in tasks:
        gates.extend(_task_gates(t, cfg, evaluation_started_at))
    if not runtime.via_session:
        ok, reason = False, "the student arm did not run through runtime.kernel"
    elif runtime.onnx_sha256 != policy_sha256:
        ok, reason = (
            False,
            f"the student arm ran policy.onnx {runtime.onnx_sha256[:16]}…, "
            f"not the signed {policy_sha256[:16]}…",
        )
    elif not runtime.provider:
        ok, reason = False, "the execution provider was not recorded"
    else:
        ok, reason = True, f"signed policy.onnx through the policy kernel on {runtime.provider}"
    gates.append(_gate("student_via_runtime", ok, reason))
    return gates
