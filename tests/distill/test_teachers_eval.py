from __future__ import annotations

import numpy as np
import pytest

from distill.errors import UnknownEnvError
from distill.evaluate import RandomPolicy, episode_returns, rollout_batch
from distill.teachers import OracleMPPITeacher, Teacher

SEEDS = [11, 12, 13, 14]


def test_oracle_teacher_beats_random_by_far_and_is_a_teacher() -> None:
    teacher = OracleMPPITeacher()
    assert isinstance(teacher, Teacher)
    oracle = episode_returns("Pendulum-v1", teacher, SEEDS)
    rand = episode_returns("Pendulum-v1", RandomPolicy("Pendulum-v1"), SEEDS)
    assert oracle.shape == (4,)
    assert oracle.mean() > -400 > -800 > rand.mean()


def test_same_seeds_give_identical_returns() -> None:
    a = episode_returns("Pendulum-v1", OracleMPPITeacher(seed=3), SEEDS[:2])
    b = episode_returns("Pendulum-v1", OracleMPPITeacher(seed=3), SEEDS[:2])
    np.testing.assert_array_equal(a, b)


def test_oracle_actions_stay_in_bounds_and_follow_variant() -> None:
    heavy = OracleMPPITeacher(variant={"g": 14.0, "m": 1.5})
    assert heavy.digest() != OracleMPPITeacher().digest()
    returns, records = rollout_batch("Pendulum-v1", heavy, [5], {"g": 14.0, "m": 1.5}, record=True)
    assert records[0]["actions"].shape == (200, 1)
    assert np.abs(records[0]["actions"]).max() <= 2.0
    assert records[0]["rewards"].sum() == pytest.approx(returns[0], rel=1e-5)


def test_oracle_refuses_other_environments() -> None:
    with pytest.raises(UnknownEnvError, match="only Pendulum-v1"):
        OracleMPPITeacher("Reacher-v5")
