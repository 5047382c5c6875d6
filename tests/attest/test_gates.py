"""Validity gates refuse degenerate evidence, and the verdict follows gates and TOST."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.attest.analysis import analyse
from cloud.attest.gates import (
    Episode,
    GateConfig,
    Margin,
    StudentRuntime,
    TaskEvidence,
    evaluate_gates,
)

POLICY = "ab" * 32
START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
RUNTIME = StudentRuntime(onnx_sha256=POLICY, via_session=True, provider="CPUExecutionProvider")


def _episodes(seeds, returns, length=200, **kw) -> dict[int, Episode]:
    base = {
        "length": length,
        "actions_finite": True,
        "env_hash": "env",
        "protocol_hash": "proto",
        "normaliser_hash": "norm",
    }
    base.update(kw)
    return {s: Episode(seed=s, ret=float(r), **base) for s, r in zip(seeds, returns, strict=True)}


def _task(n=60, shift=0.0, noise=5.0, seed=0, **overrides) -> TaskEvidence:
    rng = np.random.default_rng(seed)
    seeds = tuple(range(1000, 1000 + n))
    teacher = rng.normal(-155, 80, size=n)
    student = teacher + shift + rng.normal(0, noise, size=n)
    fields = {
        "name": f"pendulum-{seed}",
        "planned_seeds": seeds,
        "episode_length": 200,
        "student": _episodes(seeds, student),
        "teacher": _episodes(seeds, teacher),
        "margin": Margin(-52.0, 52.0, START - timedelta(minutes=5), "5% of teacher − random"),
        "teacher_reference_mean": -160.0,
        "random_reference_mean": -1200.0,
        "reference_return": -150.0,
        "calibration_seeds": tuple(range(10)),
    }
    fields.update(overrides)
    return TaskEvidence(**fields)


def _failed(tasks, runtime=RUNTIME, config=None) -> dict[str, str]:
    gates = evaluate_gates(
        tasks, runtime, policy_sha256=POLICY, evaluation_started_at=START, config=config
    )
    return {g.name: g.reason for g in gates if not g.passed}


def test_good_evidence_passes_every_gate_and_is_attested() -> None:
    tasks = [_task(seed=i) for i in range(3)]
    assert _failed(tasks) == {}
    gates = evaluate_gates(tasks, RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
    result = analyse(tasks, gates)
    assert result.verdict == "attested"
    assert all(t["outcome"] == "equivalent" for t in result.tasks)
    assert result.aggregate["intersection_union_all_raw_p_le_alpha"] is True
    assert 0.9 < result.aggregate["normalised_iqm"]["student"] < 1.2


def test_zero_variance_is_refused() -> None:
    t = _task()
    constant_gap = _episodes(t.planned_seeds, [e.ret + 3.0 for e in t.teacher.values()])
    failed = _failed([dataclasses.replace(t, student=constant_gap)])
    assert "zero standard error" in failed["positive_variance"]


def test_nan_return_and_nonfinite_actions_are_refused() -> None:
    t = _task()
    student = dict(t.student)
    student[1003] = dataclasses.replace(student[1003], ret=float("nan"))
    student[1007] = dataclasses.replace(student[1007], actions_finite=False)
    failed = _failed([dataclasses.replace(t, student=student)])
    assert "1003" in failed["finite"] and "1007" in failed["finite"]


def test_too_few_pairs_are_refused() -> None:
    assert "12 complete pairs (minimum 30)" in _failed([_task(n=12)])["min_pairs"]


def test_missing_pairs_are_refused_and_named() -> None:
    t = _task()
    student = {k: v for k, v in t.student.items() if k != 1010}
    failed = _failed([dataclasses.replace(t, student=student)])
    assert "student arm lacks seeds 1010" in failed["pairs_complete"]
    # The verdict cannot be rescued by the remaining pairs.
    bad = dataclasses.replace(t, student=student)
    gates = evaluate_gates([bad], RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
    assert analyse([bad], gates).verdict == "not_attested"


@pytest.mark.parametrize(("low", "high"), [(5.0, 50.0), (-50.0, -5.0), (0.0, 10.0)])
def test_margin_not_around_zero_is_refused(low: float, high: float) -> None:
    t = _task(margin=Margin(low, high, START - timedelta(minutes=1), "hand"))
    assert "not a band around zero" in _failed([t])["margin_prespecified"]


def test_margin_fixed_after_evaluation_started_is_refused() -> None:
    t = _task(margin=Margin(-50, 50, START + timedelta(seconds=1), "after the fact"))
    assert "not before evaluation" in _failed([t])["margin_prespecified"]


def test_teacher_no_better_than_random_is_refused() -> None:
    t = _task(teacher_reference_mean=-1190.0)
    assert "teacher − random" in _failed([t])["teacher_beats_random"]
    t = _task(teacher_reference_mean=-1300.0)  # worse than random
    assert "teacher_beats_random" in _failed([t])
    t = _task(reference_return=None)
    assert "no reference return" in _failed([t])["teacher_beats_random"]


def test_episode_length_off_protocol_is_refused() -> None:
    t = _task()
    teacher = dict(t.teacher)
    teacher[1001] = dataclasses.replace(teacher[1001], length=150)
    assert "1001" in _failed([dataclasses.replace(t, teacher=teacher)])["episode_lengths"]


def test_arms_with_different_environment_hash_are_refused() -> None:
    t = _task()
    teacher = {k: dataclasses.replace(v, env_hash="other") for k, v in t.teacher.items()}
    assert (
        "env_hash differs" in _failed([dataclasses.replace(t, teacher=teacher)])["arms_consistent"]
    )


def test_evaluation_seeds_overlapping_training_seeds_are_refused() -> None:
    failed = _failed([_task()], config=GateConfig(training_seeds=frozenset({1005, 7})))
    assert "1005" in failed["seeds_disjoint"]
    assert "seeds_disjoint" in _failed([_task(calibration_seeds=(1000,))])


def test_student_not_run_through_the_signed_file_is_refused() -> None:
    other = dataclasses.replace(RUNTIME, onnx_sha256="cd" * 32)
    assert "not the signed" in _failed([_task()], runtime=other)["student_via_runtime"]
    torch_arm = dataclasses.replace(RUNTIME, via_session=False)
    assert "runtime.kernel" in _failed([_task()], runtime=torch_arm)["student_via_runtime"]


def test_degraded_student_is_not_attested_with_precise_evidence() -> None:
    tasks = [_task(shift=-120.0, noise=10.0)]
    gates = evaluate_gates(tasks, RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
    result = analyse(tasks, gates)
    assert result.verdict == "not_attested"
    assert result.tasks[0]["outcome"] == "not_equivalent"


def test_noisy_equal_student_is_underpowered_not_failed_nor_passed() -> None:
    tasks = [_task(n=30, noise=200.0)]
    gates = evaluate_gates(tasks, RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
    result = analyse(tasks, gates)
    assert result.verdict == "underpowered"
    assert result.tasks[0]["pairs_for_80_power"] > 30


def test_holm_adjusted_p_values_are_reported_and_never_below_raw() -> None:
    # Holm multiplies the smallest of three p-values by 3.
    tasks = []
    for i in range(3):
        t = _task(n=40, noise=60.0, seed=10 + i)
        gates = evaluate_gates([t], RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
        tasks.append((t, analyse([t], gates).tasks[0]["p_tost"]))
    chosen = [t for t, p in tasks]
    gates = evaluate_gates(chosen, RUNTIME, policy_sha256=POLICY, evaluation_started_at=START)
    result = analyse(chosen, gates)
    ps = sorted(r["p_tost"] for r in result.tasks)
    holm = sorted(r["p_holm"] for r in result.tasks)
    assert holm[0] == pytest.approx(min(1.0, 3 * ps[0]))
    assert all(h >= p for h, p in zip(holm, ps, strict=True))


def test_no_recorded_training_seeds_is_unknown_not_passed_and_does_not_decide() -> None:
    tasks = [_task(seed=i) for i in range(3)]
    gates = evaluate_gates(
        tasks,
        RUNTIME,
        policy_sha256=POLICY,
        evaluation_started_at=START,
        config=GateConfig(training_seeds=None),
    )
    seeds = [g for g in gates if g.name == "seeds_disjoint"]
    assert {g.outcome for g in seeds} == {"unknown"}
    assert "records no training seeds" in seeds[0].reason
    assert analyse(tasks, gates).verdict == "attested"
    leaked = _task(calibration_seeds=(1000,))
    cfg = GateConfig(training_seeds=None)
    assert "calibration" in _failed([leaked], config=cfg)["seeds_disjoint"]


def test_an_arm_not_run_under_its_declared_settings_is_inconsistent() -> None:
    good = _task(student_settings="norm", teacher_settings="norm")
    assert "arms_consistent" not in _failed([good])
    wrong = _task(student_settings="s" * 64)
    assert "student arm applied" in _failed([wrong])["arms_consistent"]
    seeds = tuple(range(1000, 1060))
    mixed = dict(_task().student)
    mixed[1000] = _episodes((1000,), (-150.0,), normaliser_hash="other")[1000]
    reason = _failed([_task(student=mixed)])["arms_consistent"]
    assert "student arm ran under 2 different" in reason and len(seeds) == 60
