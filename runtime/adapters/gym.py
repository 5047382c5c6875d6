"""A gymnasium environment driven as a simulated robot (the demo's robots).

Each `write_action` steps the environment once; an episode that ends is reset, and
its return is kept in `episode_returns`. gymnasium is the ``sim`` extra, imported
only when this adapter is created, so a real robot never loads it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.adapters import AdapterError

__all__ = ["GymAdapter"]


class GymAdapter:
    def __init__(self, env: str = "Pendulum-v1", seed: int = 0, **env_kwargs: Any) -> None:
        try:
            import gymnasium
        except ImportError as exc:
            raise AdapterError(
                "the gym adapter needs gymnasium: pip install 'edgeflux[sim]'"
            ) from exc
        try:
            self._env = gymnasium.make(env, **env_kwargs)
        except Exception as exc:  # gymnasium raises several unrelated error types
            raise AdapterError(f"gym adapter: cannot make environment {env!r}: {exc}") from exc
        self.env_id = env
        self._seed = seed
        self._lock = threading.Lock()
        obs, _ = self._env.reset(seed=seed)
        self._obs = np.asarray(obs, np.float32)
        self._episode_return = 0.0
        self.episode_returns: list[float] = []
        self.steps = 0

    def read_observation(self) -> npt.NDArray[np.float32]:
        with self._lock:
            return self._obs.copy()

    def write_action(self, action: npt.NDArray[np.float32]) -> None:
        with self._lock:
            try:
                obs, reward, terminated, truncated, _ = self._env.step(np.asarray(action))
            except Exception as exc:
                raise AdapterError(f"gym adapter: {self.env_id} rejected action: {exc}") from exc
            self.steps += 1
            self._episode_return += float(reward)
            if terminated or truncated:
                self.episode_returns.append(self._episode_return)
                self._episode_return = 0.0
                obs, _ = self._env.reset()
            self._obs = np.asarray(obs, np.float32)

    def is_safe_to_switch(self) -> bool:
        return True

    def close(self) -> None:
        self._env.close()
