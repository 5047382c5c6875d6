"""Trajectories and the replay buffer, stored as one `.npz` (no torch needed to read it).

Layout ``edgeflux.replay/v1`` (all arrays C-contiguous, ``np.load(allow_pickle=False)``):

====================  ==============  ==============================================
key                   shape / dtype   meaning
====================  ==============  ==============================================
``format``            () str          ``"edgeflux.replay/v1"``
``env_id``            () str          environment the data came from
``obs``               (S, obs) f32    observations; episode i has T_i + 1 of them
``actions``           (N, act) f32    actions executed, N = sum T_i
``rewards``           (N,) f32        rewards received
``labels``            (N, act) f32    teacher actions at ``obs`` (DAgger); NaN-free;
                                      absent (shape (0, act)) if never labelled
``episode_lengths``   (E,) i64        T_i per episode, in insertion order
``seeds``             (E,) i64        reset seed of each episode (-1 if unknown)
====================  ==============  ==============================================

Step t of episode i is ``obs[o_i + t] --actions[a_i + t]--> obs[o_i + t + 1]`` with
``o_i = sum_{j<i} (T_j + 1)`` and ``a_i = sum_{j<i} T_j``. `dataset_digest` hashes
the arrays themselves (not the zip container, whose timestamps vary), so the same
data always has the same digest.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ReplayError
from runtime.atomicio import atomic_writer

__all__ = ["FORMAT", "ReplayBuffer", "Trajectory", "load_replay"]

FORMAT = "edgeflux.replay/v1"
_ARRAYS = ("obs", "actions", "rewards", "labels", "episode_lengths", "seeds")


@dataclass(frozen=True)
class Trajectory:
    """One episode: T actions/rewards, T + 1 observations, optional teacher labels."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    labels: np.ndarray | None = None
    seed: int = -1

    def __post_init__(self) -> None:
        t = len(self.actions)
        if self.obs.ndim != 2 or self.actions.ndim != 2 or len(self.obs) != t + 1:
            raise ReplayError(
                f"trajectory needs obs (T+1, obs_dim) and actions (T, act_dim); got "
                f"obs {self.obs.shape}, actions {self.actions.shape}"
            )
        if self.rewards.shape != (t,):
            raise ReplayError(f"trajectory rewards shape {self.rewards.shape}, expected ({t},)")
        if self.labels is not None and self.labels.shape != self.actions.shape:
            raise ReplayError(
                f"trajectory labels shape {self.labels.shape} != actions {self.actions.shape}"
            )
        for name in ("obs", "actions", "rewards", "labels"):
            arr = getattr(self, name)
            if arr is not None and not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr))[0].tolist()
                raise ReplayError(f"trajectory {name} has NaN or inf at index {bad}")

    def __len__(self) -> int:
        return len(self.actions)


class ReplayBuffer:
    """Growable store of whole episodes with uniform sub-sequence sampling."""

    def __init__(self, env_id: str, obs_dim: int, act_dim: int) -> None:
        self.env_id = env_id
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self._episodes: list[Trajectory] = []
        self._cache: dict[str, np.ndarray] | None = None

    # -- building -----------------------------------------------------------
    def add(self, traj: Trajectory) -> None:
        if traj.obs.shape[1] != self.obs_dim or traj.actions.shape[1] != self.act_dim:
            raise ReplayError(
                f"trajectory has obs_dim {traj.obs.shape[1]} / act_dim {traj.actions.shape[1]}; "
                f"buffer for {self.env_id} holds {self.obs_dim} / {self.act_dim}"
            )
        has_labels = self._episodes and self._episodes[0].labels is not None
        if self._episodes and (traj.labels is not None) != has_labels:
            raise ReplayError("either every trajectory in a buffer has teacher labels or none")
        self._episodes.append(traj)
        self._cache = None

    def __len__(self) -> int:
        """Number of transitions."""
        return sum(len(t) for t in self._episodes)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def episodes(self) -> list[Trajectory]:
        return list(self._episodes)

    # -- flat views ---------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The v1 arrays (see module docstring); cached until the next `add`."""
        if self._cache is None:
            eps = self._episodes
            labelled = bool(eps) and eps[0].labels is not None
            self._cache = {
                "obs": _cat([t.obs for t in eps], (0, self.obs_dim), np.float32),
                "actions": _cat([t.actions for t in eps], (0, self.act_dim), np.float32),
                "rewards": _cat([t.rewards for t in eps], (0,), np.float32),
                "labels": _cat(
                    [t.labels for t in eps if t.labels is not None] if labelled else [],
                    (0, self.act_dim),
                    np.float32,
                ),
                "episode_lengths": np.array([len(t) for t in eps], dtype=np.int64),
                "seeds": np.array([t.seed for t in eps], dtype=np.int64),
            }
        return self._cache

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """(obs_t, index into actions) for every step: the states a policy acted in."""
        a = self.arrays()
        lengths = a["episode_lengths"]
        obs_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        idx = np.concatenate([s + np.arange(n) for s, n in zip(obs_start, lengths, strict=True)])
        return a["obs"][idx.astype(np.int64)] if len(idx) else a["obs"][:0], idx

    def sample_sequences(
        self, batch: int, horizon: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`batch` windows of `horizon` steps, time-major.

        Returns obs (H+1, B, obs_dim), actions (H, B, act_dim), rewards (H, B).
        """
        a = self.arrays()
        lengths = a["episode_lengths"]
        ok = np.flatnonzero(lengths >= horizon)
        if len(ok) == 0:
            raise ReplayError(f"no episode in the buffer has {horizon} steps to sample")
        weights = (lengths[ok] - horizon + 1).astype(np.float64)
        ep = ok[rng.choice(len(ok), size=batch, p=weights / weights.sum())]
        start = rng.integers(0, lengths[ep] - horizon + 1)
        obs_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])[ep] + start
        act_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])[ep] + start
        steps = np.arange(horizon + 1)[:, None]
        obs = a["obs"][obs_start[None, :] + steps]
        actions = a["actions"][act_start[None, :] + steps[:-1]]
        rewards = a["rewards"][act_start[None, :] + steps[:-1]]
        return obs, actions, rewards

    # -- persistence --------------------------------------------------------
    def digest(self) -> str:
        """``sha256:<hex>`` over format, env id and every array's dtype, shape and bytes."""
        h = hashlib.sha256()
        h.update(f"{FORMAT}\0{self.env_id}\0".encode())
        for key in _ARRAYS:
            arr = np.ascontiguousarray(self.arrays()[key])
            h.update(f"{key}\0{arr.dtype.str}\0{arr.shape}\0".encode())
            h.update(arr.tobytes())
        return "sha256:" + h.hexdigest()

    def save(self, path: str | Path) -> str:
        """Write the buffer atomically to `path` (.npz); returns its dataset digest."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = {
            "format": np.array(FORMAT),
            "env_id": np.array(self.env_id),
            **self.arrays(),
        }
        np.savez(buf, **arrays)
        with atomic_writer(path) as fh:
            fh.write(buf.getvalue())
        return self.digest()


def _cat(parts: list[np.ndarray], empty: tuple[int, ...], dtype: type) -> np.ndarray:
    if not parts:
        return np.zeros(empty, dtype=dtype)
    return np.ascontiguousarray(np.concatenate(parts).astype(dtype, copy=False))


def load_replay(path: str | Path) -> ReplayBuffer:
    """Read a v1 `.npz`; every array is checked (keys, shapes, finiteness) before use."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such replay file") from None
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{path}: not a readable .npz replay file ({exc})") from exc
    fmt = str(data.get("format", ""))
    if fmt != FORMAT:
        raise ReplayError(f"{path}: format is {fmt!r}; this reader understands {FORMAT!r}")
    missing = [k for k in (*_ARRAYS, "env_id") if k not in data]
    if missing:
        raise ReplayError(f"{path}: missing arrays {missing}")
    obs, actions = data["obs"], data["actions"]
    if obs.ndim != 2 or actions.ndim != 2:
        raise ReplayError(f"{path}: obs and actions must be 2-D, got {obs.shape}, {actions.shape}")
    lengths, seeds = data["episode_lengths"], data["seeds"]
    n_act, n_obs = int(lengths.sum()), int((lengths + 1).sum())
    if n_act != len(actions) or n_obs != len(obs) or len(seeds) != len(lengths):
        raise ReplayError(
            f"{path}: episode_lengths (sum {int(lengths.sum())}, {len(lengths)} episodes) do not "
            f"match obs ({len(obs)}) / actions ({len(actions)}) / seeds ({len(seeds)})"
        )
    labels = data["labels"]
    labelled = len(labels) > 0
    if labelled and labels.shape != actions.shape:
        raise ReplayError(f"{path}: labels shape {labels.shape} != actions {actions.shape}")
    buf = ReplayBuffer(str(data["env_id"]), obs.shape[1], actions.shape[1])
    o = a = 0
    for i, (n, seed) in enumerate(zip(lengths.tolist(), seeds.tolist(), strict=True)):
        try:
            buf.add(
                Trajectory(
                    obs=obs[o : o + n + 1],
                    actions=actions[a : a + n],
                    rewards=data["rewards"][a : a + n],
                    labels=labels[a : a + n] if labelled else None,
                    seed=int(seed),
                )
            )
        except ReplayError as exc:
            raise ReplayError(f"{path}: episode {i}: {exc}") from None
        o, a = o + n + 1, a + n
    return buf
