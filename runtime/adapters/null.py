"""A robot that is not there: constant observations, actions dropped. For benchmarks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["NullAdapter"]


class NullAdapter:
    def __init__(self, obs_dim: int, value: float = 0.0) -> None:
        if obs_dim < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        self._obs = np.full(obs_dim, value, np.float32)
        self.writes = 0
        self.last_action: npt.NDArray[np.float32] | None = None

    def read_observation(self) -> npt.NDArray[np.float32]:
        return self._obs

    def write_action(self, action: npt.NDArray[np.float32]) -> None:
        self.writes += 1
        self.last_action = action

    def is_safe_to_switch(self) -> bool:
        return True

    def close(self) -> None:
        pass
