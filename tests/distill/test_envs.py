from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from distill.envs import EnvBatch, env_spec, make_env
from distill.errors import UnboundedActionError, UnknownEnvError


def test_pendulum_spec_declares_bounds_and_20hz_rate() -> None:
    spec = env_spec("Pendulum-v1")
    assert (spec.obs_dim, spec.act_dim) == (3, 1)
    np.testing.assert_array_equal(spec.obs_high, [1, 1, 8])
    np.testing.assert_array_equal(spec.act_low, [-2])
    assert spec.rate_hz == 20.0 and spec.max_episode_steps == 200


def test_mujoco_task_has_finite_declared_observation_bounds() -> None:
    spec = env_spec("Reacher-v5")
    assert spec.obs_low.shape == (spec.obs_dim,)
    assert np.all(np.isfinite(spec.obs_low)) and spec.rate_hz == 50.0


def test_unknown_env_error_lists_known_ids() -> None:
    with pytest.raises(UnknownEnvError, match=r"'CartPole-v9'.*Pendulum-v1.*Reacher-v5"):
        make_env("CartPole-v9")


def test_unbounded_action_space_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill import envs

    monkeypatch.setitem(envs.KNOWN_ENVS, "CartPole-v1", envs.KNOWN_ENVS["Pendulum-v1"])
    with pytest.raises(UnboundedActionError, match="Discrete"):
        make_env("CartPole-v1")
    with pytest.raises(UnboundedActionError, match="unbounded"):
        envs._check_action_space("X-v0", gym.spaces.Box(-np.inf, np.inf, shape=(2,)))


def test_variant_changes_physics_and_rejects_unknown_keys() -> None:
    env = make_env("Pendulum-v1", {"g": 12.0, "m": 1.3})
    assert env.unwrapped.g == 12.0 and env.unwrapped.m == 1.3
    with pytest.raises(UnknownEnvError, match=r"no variant parameter 'gravity'.*allowed: g, l, m"):
        make_env("Pendulum-v1", {"gravity": 12.0})
    with pytest.raises(UnknownEnvError, match="outside"):
        make_env("Pendulum-v1", {"g": -1.0})


def test_env_batch_ends_each_episode_once_and_replays_seeds() -> None:
    batch = EnvBatch("Pendulum-v1", 3)
    first = batch.reset([1, 2, 1])
    np.testing.assert_array_equal(first[0], first[2])
    steps = 0
    while batch.active.any():
        _, rewards, done = batch.step(np.zeros((3, 1), dtype=np.float32))
        steps += 1
    assert steps == 200 and done.all()
    _, rewards, _ = batch.step(np.zeros((3, 1), dtype=np.float32))
    assert np.all(rewards == 0)  # finished copies are frozen, not auto-reset
