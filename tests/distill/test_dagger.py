from __future__ import annotations

import numpy as np
import pytest

from distill.dagger import DaggerConfig, DaggerResult, run_dagger
from distill.envs import env_spec
from distill.evaluate import episode_returns
from distill.mppi import MPPIConfig
from distill.student import StudentConfig, TorchPolicy
from distill.teachers import OracleMPPITeacher

SPEC = env_spec("Pendulum-v1")
FAST_ORACLE = MPPIConfig(horizon=10, num_samples=64, iterations=2, num_elites=8, num_pi_trajs=0)
TINY = DaggerConfig(rounds=3, envs_per_round=4, epochs=15)


def _run(seed: int) -> DaggerResult:
    teacher = OracleMPPITeacher(mppi=FAST_ORACLE, seed=seed)
    return run_dagger(SPEC, teacher, TINY, StudentConfig(), seed)


@pytest.fixture(scope="module")
def result() -> DaggerResult:
    return _run(0)


def test_dagger_mixes_with_halving_beta_and_labels_every_visited_state(
    result: DaggerResult,
) -> None:
    assert result.curves["beta"] == [1.0, 0.5, 0.25]
    data = result.data
    assert data.num_episodes == 12 and len(data) == 12 * 200
    arrays = data.arrays()
    first_round = slice(0, 4 * 200)
    # Round 0 executes the teacher alone; later rounds execute a mixture.
    np.testing.assert_array_equal(arrays["actions"][first_round], arrays["labels"][first_round])
    later = slice(8 * 200, 12 * 200)
    assert np.any(arrays["actions"][later] != arrays["labels"][later])


def test_student_learns_to_swing_up_far_better_than_random(result: DaggerResult) -> None:
    seeds = [500, 501, 502, 503]
    student = episode_returns("Pendulum-v1", TorchPolicy(result.student), seeds)
    assert student.mean() > -600  # random is about -1200


def test_same_seed_gives_identical_student_and_returns() -> None:
    tiny = DaggerConfig(rounds=2, envs_per_round=2, epochs=3)
    teacher = OracleMPPITeacher(mppi=FAST_ORACLE, seed=4)
    a, b = (run_dagger(SPEC, teacher, tiny, StudentConfig(), 4) for _ in range(2))
    assert a.data.digest() == b.data.digest()
    for pa, pb in zip(a.student.parameters(), b.student.parameters(), strict=True):
        assert (pa == pb).all()
    assert a.curves == b.curves
