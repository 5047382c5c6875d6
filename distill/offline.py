"""Offline world-model training from recorded episodes, with a held-out validation split.

Dataset: a directory of ``*.npz`` files, one episode each (``np.load`` without pickle):

================  ===================  ==========================================
key               shape / dtype        meaning
================  ===================  ==========================================
``observations``  (T+1, obs_dim) float observations; the last follows the last action
``actions``       (T, act_dim) float   actions in the environment's units, within bounds
``rewards``       (T,) float           rewards received
``terminations``  (T,) bool            true where the episode ended in a terminal
                                       state; only the last step may be true
================  ===================  ==========================================

The dataset may instead be one ``edgeflux.replay/v1`` file (`distill.replay`), such as
the robots' flight recordings exported by ``edgeflux cloud recordings export --npz``;
its episodes are checked like files. Recordings carry no reward (the export writes
zeros): `rewards="env"` labels every step with the environment's own reward function
of observation and action (`distill.envs.reward_function`), and a dataset whose
rewards are all zero is refused unless so labelled — a model trained on them would
predict nothing to plan or act for.

Episodes are split by file (seeded shuffle of the sorted names; for a replay file, of
its episodes): `val_fraction` of them, at least one, are held out. After training,
the validation error is the mean squared error of the rewards the model predicts
along open-loop rollouts of `horizon` steps from each held-out window's first
observation (`encode`, then `reward` and `next` with the recorded actions) —
family-agnostic — reported beside the same error of the untrained model and the
rewards' variance.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.envs import EnvSpec, discount_for, reward_function
from distill.errors import ReplayError
from distill.replay import ReplayBuffer, Trajectory, load_replay
from distill.wm_interface import TrainableWorldModel
from distill.wm_registry import load_family
from distill.world_model import pick_device

__all__ = ["REWARD_SOURCES", "OfflineConfig", "OfflineResult", "load_episodes", "train_offline"]

REWARD_SOURCES = ("recorded", "env")

_KEYS = ("observations", "actions", "rewards", "terminations")


@dataclass(frozen=True)
class OfflineConfig:
    family: str = "tdmpc2"
    preset: str = "cpu-small"
    updates: int = 2_000
    """Gradient steps on windows sampled from the training episodes."""
    val_fraction: float = 0.2
    val_windows: int = 256
    device: str = "auto"
    rewards: str = "recorded"
    """"recorded": the dataset's rewards; "env": the environment's reward function."""

    def __post_init__(self) -> None:
        if self.updates < 0 or not 0 < self.val_fraction < 1 or self.val_windows < 1:
            raise ValueError(f"invalid offline training settings: {self}")
        if self.rewards not in REWARD_SOURCES:
            raise ValueError(f"rewards must be one of {REWARD_SOURCES}, not {self.rewards!r}")


@dataclass
class OfflineResult:
    model: TrainableWorldModel
    train: ReplayBuffer
    validation: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def _episode(path: Path, spec: EnvSpec) -> Trajectory:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in _KEYS if k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ReplayError(f"{path}: not a readable .npz episode ({exc})") from None
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise ReplayError(f"{path}: missing {', '.join(missing)} (needs {', '.join(_KEYS)})")
    return _checked(*(arrays[k] for k in _KEYS), where=str(path), spec=spec)


def _checked(
    obs: np.ndarray,
    act: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    *,
    where: str,
    spec: EnvSpec,
) -> Trajectory:
    """One episode's arrays, checked against `spec`; errors name `where`."""
    t = len(act)
    shapes = {
        "observations": (obs.shape, (t + 1, spec.obs_dim)),
        "actions": (act.shape, (t, spec.act_dim)),
        "rewards": (rew.shape, (t,)),
        "terminations": (term.shape, (t,)),
    }
    for key, (got, want) in shapes.items():
        if got != want or t < 1:
            raise ReplayError(f"{where}: {key} has shape {got}, expected {want} for {spec.env_id}")
    for key, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
            raise ReplayError(f"{where}: {key} must be finite numbers")
    if term.dtype != np.bool_:
        raise ReplayError(f"{where}: terminations must be bool, not {term.dtype}")
    if term[:-1].any():
        raise ReplayError(
            f"{where}: terminations is true at step {int(np.argmax(term))} before the last; "
            "one file holds one episode"
        )
    if np.any(act < spec.act_low - 1e-6) or np.any(act > spec.act_high + 1e-6):
        raise ReplayError(
            f"{where}: actions leave the bounds [{spec.act_low.tolist()}, {spec.act_high.tolist()}]"
        )
    return Trajectory(obs.astype(np.float32), act.astype(np.float32), rew.astype(np.float32))


def _replay_episodes(path: Path, spec: EnvSpec) -> list[Trajectory]:
    buffer = load_replay(path)
    if (buffer.obs_dim, buffer.act_dim) != (spec.obs_dim, spec.act_dim):
        raise ReplayError(
            f"{path}: episodes map {buffer.obs_dim} observations to {buffer.act_dim} actions, "
            f"but {spec.env_id} has {spec.obs_dim} and {spec.act_dim}"
        )
    out = []
    for i, ep in enumerate(buffer.episodes):
        term = np.zeros(len(ep.actions), dtype=bool)
        out.append(_checked(ep.obs, ep.actions, ep.rewards, term, where=f"{path}: episode {i}",
                            spec=spec))  # fmt: skip
    return out


def load_episodes(
    directory: str | Path,
    spec: EnvSpec,
    val_fraction: float,
    seed: int,
    rewards: str = "recorded",
) -> tuple[ReplayBuffer, ReplayBuffer]:
    """(train, validation) buffers from a directory of episode files or a replay file."""
    directory = Path(directory)
    if directory.is_file():
        episodes = _replay_episodes(directory, spec)
        what = "episode(s) in the replay file"
    elif directory.is_dir():
        files = sorted(directory.glob("*.npz"))
        episodes = [_episode(f, spec) for f in files]
        what = ".npz episode(s)"
    else:
        raise ReplayError(f"{directory}: no such dataset directory or replay file")
    if len(episodes) < 2:
        raise ReplayError(
            f"{directory}: {len(episodes)} {what}; at least 2 are needed (training and validation)"
        )
    if rewards == "env":
        label = reward_function(spec.env_id)
        episodes = [
            Trajectory(e.obs, e.actions, label(e.obs[:-1], e.actions).astype(np.float32))
            for e in episodes
        ]
    elif all(not e.rewards.any() for e in episodes):
        raise ReplayError(
            f"{directory}: every reward is zero (flight recordings carry no reward); label "
            "the steps with the environment's reward function (--wm-rewards env)"
        )
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_val = min(len(episodes) - 1, max(1, round(val_fraction * len(episodes))))
    train, val = (ReplayBuffer(spec.env_id, spec.obs_dim, spec.act_dim) for _ in range(2))
    for rank, i in enumerate(order):
        (val if rank < n_val else train).add(episodes[i])
    return train, val


@torch.no_grad()
def _val_error(
    model: TrainableWorldModel, windows: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> float:
    obs, act, rew = (torch.as_tensor(x, device=model.device) for x in windows)
    model.eval()
    z = model.encode(obs[0])
    err = torch.zeros((), device=model.device)
    for t in range(act.shape[0]):
        err = err + ((model.reward(z, act[t]) - rew[t]) ** 2).mean()
        z = model.next(z, act[t])
    return float(err) / act.shape[0]


def train_offline(
    spec: EnvSpec,
    dataset: str | Path,
    cfg: OfflineConfig,
    seed: int,
    on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> OfflineResult:
    """Train a world model of `cfg.family` on the dataset's training episodes."""
    train, val = load_episodes(dataset, spec, cfg.val_fraction, seed, cfg.rewards)
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    family = load_family(cfg.family)
    config: dict[str, Any] = {
        **family.default_config(cfg.preset),
        "discount": discount_for(spec.max_episode_steps),
    }
    model: TrainableWorldModel = family.build(spec.obs_dim, spec.act_dim, config).to(device)
    model.set_generator(torch.Generator(device=device).manual_seed(seed))
    batch, horizon = int(config.get("batch_size", 256)), int(config.get("horizon", 3))
    mid = (spec.act_high + spec.act_low) / 2
    half = (spec.act_high - spec.act_low) / 2
    v_obs, v_act, v_rew = val.sample_sequences(cfg.val_windows, horizon, rng)
    windows = (v_obs, ((v_act - mid) / half).astype(np.float32), v_rew)
    before = _val_error(model, windows)
    curves: dict[str, list[float]] = {"update": [], "total_loss": []}
    started = time.perf_counter()
    for i in range(cfg.updates):
        obs, act, rew = train.sample_sequences(batch, horizon, rng)
        stats = model.train_step(
            torch.as_tensor(obs, device=device),
            torch.as_tensor(((act - mid) / half).astype(np.float32), device=device),
            torch.as_tensor(rew, device=device),
        )
        if (i + 1) % max(1, cfg.updates // 20) == 0 or i + 1 == cfg.updates:
            curves["update"].append(float(i + 1))
            curves["total_loss"].append(stats["total_loss"])
            if on_progress is not None:
                on_progress(i + 1, cfg.updates, stats)
    validation = {
        "val_reward_mse": _val_error(model, windows),
        "val_reward_mse_untrained": before,
        "val_reward_variance": float(np.var(v_rew)),
        "val_episodes": float(val.num_episodes),
        "train_episodes": float(train.num_episodes),
        "horizon": float(horizon),
    }
    return OfflineResult(model.eval(), train, validation, curves, time.perf_counter() - started)
