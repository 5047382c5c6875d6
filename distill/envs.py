"""Environments: gymnasium adapters with declared bounds, variants, and a batch stepper.

`make_env(env_id, variant)` builds one environment; `env_spec(env_id)` says what a
policy for it must accept and emit (finite observation bounds, bounded actions,
control rate); `EnvBatch` steps many copies in lock-step for collection and
evaluation. Variants change physical parameters (Pendulum: gravity ``g``, mass
``m``, length ``l``) so parity campaigns can test a policy off its training
distribution::

    env = make_env("Pendulum-v1", {"g": 12.0, "m": 1.2})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from distill.errors import UnboundedActionError, UnknownEnvError

__all__ = [
    "KNOWN_ENVS",
    "EnvBatch",
    "EnvSpec",
    "discount_for",
    "env_spec",
    "make_env",
    "reward_function",
]


@dataclass(frozen=True)
class _Known:
    """What gymnasium does not declare: finite observation bounds and variant knobs."""

    obs_low: tuple[float, ...] | None  # None: use the space's bounds (must be finite)
    obs_high: tuple[float, ...] | None
    variants: Mapping[str, tuple[float, float]]  # attribute -> allowed (low, high)


# MuJoCo observation spaces are unbounded; these boxes cover every state the tasks
# reach under any policy we train (checked on rollouts), and the runtime's safety
# envelope rejects observations beyond them (plus its margin).
KNOWN_ENVS: dict[str, _Known] = {
    "Pendulum-v1": _Known(None, None, {"g": (0.1, 50.0), "m": (0.1, 10.0), "l": (0.1, 10.0)}),
    "Reacher-v5": _Known(
        (-1.0,) * 4 + (-0.3, -0.3) + (-50.0, -50.0) + (-0.5, -0.5),
        (1.0,) * 4 + (0.3, 0.3) + (50.0, 50.0) + (0.5, 0.5),
        {},
    ),
    "HalfCheetah-v5": _Known((-100.0,) * 17, (100.0,) * 17, {}),
}


@dataclass(frozen=True)
class EnvSpec:
    """What a policy for `env_id` consumes and produces."""

    env_id: str
    obs_dim: int
    act_dim: int
    obs_low: np.ndarray
    obs_high: np.ndarray
    act_low: np.ndarray
    act_high: np.ndarray
    rate_hz: float
    """Control rate: 1 / the environment's time step (Pendulum-v1: 20 Hz, dt 0.05 s)."""
    max_episode_steps: int


def _known(env_id: str) -> _Known:
    if env_id not in KNOWN_ENVS:
        raise UnknownEnvError(
            f"unknown environment {env_id!r}; known environments: {', '.join(sorted(KNOWN_ENVS))}"
        )
    return KNOWN_ENVS[env_id]


def make_env(env_id: str, variant: Mapping[str, float] | None = None, **kwargs: Any) -> gym.Env:
    """Build `env_id` with the physical parameters in `variant` changed.

    Raises UnknownEnvError for an id outside `KNOWN_ENVS` or a variant key the
    environment does not have, and UnboundedActionError if the action space is not
    a finite Box.
    """
    known = _known(env_id)
    variant = dict(variant or {})
    for key, value in variant.items():
        if key not in known.variants:
            raise UnknownEnvError(
                f"{env_id} has no variant parameter {key!r}; "
                f"allowed: {', '.join(sorted(known.variants)) or 'none'}"
            )
        lo, hi = known.variants[key]
        if not (isinstance(value, int | float) and lo <= float(value) <= hi):
            raise UnknownEnvError(f"{env_id} variant {key}={value!r} is outside [{lo}, {hi}]")
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:  # e.g. missing MuJoCo bindings
        raise UnknownEnvError(f"gymnasium could not build {env_id!r}: {exc}") from exc
    for key, value in variant.items():
        setattr(env.unwrapped, key, float(value))
    _check_action_space(env_id, env.action_space)
    return env


def _check_action_space(env_id: str, space: gym.Space[Any]) -> None:
    if not isinstance(space, gym.spaces.Box):
        raise UnboundedActionError(
            f"{env_id}: action space is {type(space).__name__}; a continuous Box is required"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise UnboundedActionError(
            f"{env_id}: action space {space} is unbounded; the student squashes actions "
            "with tanh into [low, high], so both bounds must be finite"
        )


def env_spec(env_id: str) -> EnvSpec:
    """Shapes, declared finite bounds and control rate of `env_id`."""
    known = _known(env_id)
    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
        if known.obs_low is None or known.obs_high is None:
            low, high = obs_space.low, obs_space.high
        else:
            low, high = np.array(known.obs_low), np.array(known.obs_high)
        if low.shape != obs_space.shape or not np.all(np.isfinite(low) & np.isfinite(high)):
            raise UnknownEnvError(
                f"{env_id}: declared observation bounds must be finite with shape {obs_space.shape}"
            )
        dt = float(getattr(env.unwrapped, "dt", 0.0)) or 0.05
        steps = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 1000
        return EnvSpec(
            env_id=env_id,
            obs_dim=int(obs_space.shape[0]),
            act_dim=int(act_space.shape[0]),
            obs_low=low.astype(np.float32),
            obs_high=high.astype(np.float32),
            act_low=act_space.low.astype(np.float32),
            act_high=act_space.high.astype(np.float32),
            rate_hz=round(1.0 / dt, 6),
            max_episode_steps=int(steps),
        )
    finally:
        env.close()


class EnvBatch:
    """`n` copies of one environment stepped together; finished copies stay frozen.

    Unlike gymnasium's vector envs there is no auto-reset: an episode ends for good
    when its copy terminates or truncates, so per-episode returns over a list of
    seeds (shared initial states) are exact. `active` says which copies still run.
    """

    def __init__(self, env_id: str, n: int, variant: Mapping[str, float] | None = None) -> None:
        if n < 1:
            raise ValueError(f"EnvBatch needs n >= 1, got {n}")
        self.env_id = env_id
        self.envs = [make_env(env_id, variant) for _ in range(n)]
        self.active = np.zeros(n, dtype=bool)
        self._obs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset copy i with seeds[i]; returns observations (n, obs_dim) float32."""
        if len(seeds) != len(self.envs):
            raise ValueError(f"{len(seeds)} seeds for {len(self.envs)} environments")
        obs = [env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds, strict=True)]
        self._obs = np.asarray(obs, dtype=np.float32)
        self.active[:] = True
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step every active copy; returns (obs, rewards, done). Inactive copies give reward 0."""
        if self._obs is None:
            raise RuntimeError("EnvBatch.step before reset")
        rewards = np.zeros(len(self.envs), dtype=np.float64)
        done = ~self.active
        for i, env in enumerate(self.envs):
            if not self.active[i]:
                continue
            obs, rew, term, trunc, _ = env.step(np.asarray(actions[i], dtype=np.float32))
            self._obs[i] = obs
            rewards[i] = float(rew)
            if term or trunc:
                self.active[i] = False
        done = ~self.active
        return self._obs.copy(), rewards, done

    def close(self) -> None:
        for env in self.envs:
            env.close()


def discount_for(max_episode_steps: int) -> float:
    """TD-MPC2's heuristic discount: (T/5 - 1) / (T/5), clipped to [0.95, 0.995]."""
    frac = max_episode_steps / 5
    return float(min(max((frac - 1) / frac, 0.95), 0.995)) if math.isfinite(frac) else 0.99


def _pendulum_reward(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    # Pendulum-v1's cost of the state a step starts from and the torque applied.
    th = np.arctan2(obs[:, 1], obs[:, 0])  # already in [-pi, pi]
    u = np.clip(act[:, 0], -2.0, 2.0)
    return np.asarray(-(th**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u**2))


_REWARDS = {"Pendulum-v1": _pendulum_reward}


def reward_function(env_id: str) -> Any:
    """`reward(obs (T, obs_dim), actions (T, act_dim)) -> (T,)`: the reward the
    environment pays for each step that starts from obs and applies the action, for
    environments whose reward depends on those alone (Pendulum-v1). Labels recorded
    episodes, which carry no reward."""
    if env_id not in _REWARDS:
        raise UnknownEnvError(
            f"no reward function of observation and action is known for {env_id!r} "
            f"(known: {', '.join(sorted(_REWARDS))}); record rewards with the episodes"
        )
    return _REWARDS[env_id]
