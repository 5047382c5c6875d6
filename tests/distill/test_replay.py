from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.errors import ReplayError
from distill.replay import FORMAT, ReplayBuffer, Trajectory, load_replay


def _traj(t: int, seed: int, labels: bool = False) -> Trajectory:
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(t, 1)).astype(np.float32)
    return Trajectory(
        obs=rng.normal(size=(t + 1, 3)).astype(np.float32),
        actions=acts,
        rewards=rng.normal(size=t).astype(np.float32),
        labels=acts * 2 if labels else None,
        seed=seed,
    )


def _buffer(labels: bool = False) -> ReplayBuffer:
    buf = ReplayBuffer("Pendulum-v1", 3, 1)
    for i, t in enumerate((5, 8, 3)):
        buf.add(_traj(t, i, labels))
    return buf


def test_round_trip_keeps_arrays_and_digest(tmp_path: Path) -> None:
    buf = _buffer(labels=True)
    digest = buf.save(tmp_path / "r.npz")
    back = load_replay(tmp_path / "r.npz")
    assert back.digest() == digest and digest.startswith("sha256:")
    for key, arr in buf.arrays().items():
        np.testing.assert_array_equal(back.arrays()[key], arr)
    assert back.num_episodes == 3 and len(back) == 16


def test_file_is_plain_npz_loadable_without_torch(tmp_path: Path) -> None:
    _buffer().save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        assert str(z["format"]) == FORMAT
        assert z["obs"].shape == (16 + 3, 3) and list(z["episode_lengths"]) == [5, 8, 3]


def test_digest_changes_with_any_value() -> None:
    a, b = _buffer(), _buffer()
    assert a.digest() == b.digest()
    b.add(_traj(2, 9))
    assert a.digest() != b.digest()


def test_sampled_windows_never_cross_episode_boundaries() -> None:
    buf = ReplayBuffer("Pendulum-v1", 1, 1)
    for ep in range(4):
        t = 6 + ep
        obs = np.full((t + 1, 1), ep, dtype=np.float32) + np.arange(t + 1)[:, None] / 100
        buf.add(Trajectory(obs, np.zeros((t, 1), np.float32), np.zeros(t, np.float32)))
    obs, actions, rewards = buf.sample_sequences(64, 3, np.random.default_rng(0))
    assert obs.shape == (4, 64, 1) and actions.shape == (3, 64, 1) and rewards.shape == (3, 64)
    episode = np.floor(obs[..., 0])
    assert np.all(episode == episode[0])  # one episode per window
    np.testing.assert_allclose(np.diff(obs[..., 0], axis=0), 0.01, atol=1e-5)  # consecutive


def test_nan_in_trajectory_is_rejected_with_location() -> None:
    t = _traj(4, 0)
    obs = t.obs.copy()
    obs[2, 1] = np.nan
    with pytest.raises(ReplayError, match=r"obs has NaN or inf at index \[2, 1\]"):
        Trajectory(obs, t.actions, t.rewards)


def test_nan_in_replay_file_is_rejected(tmp_path: Path) -> None:
    arrays = _buffer().arrays()
    rewards = arrays["rewards"].copy()
    rewards[7] = np.nan
    np.savez(
        tmp_path / "bad.npz",
        format=np.array(FORMAT),
        env_id=np.array("Pendulum-v1"),
        **{**arrays, "rewards": rewards},
    )
    with pytest.raises(ReplayError, match=r"bad.npz: episode 1: .*rewards has NaN"):
        load_replay(tmp_path / "bad.npz")


def test_wrong_format_and_mismatched_lengths_are_rejected(tmp_path: Path) -> None:
    arrays = _buffer().arrays()
    np.savez(tmp_path / "v0.npz", format=np.array("other/v0"), env_id=np.array("x"), **arrays)
    with pytest.raises(ReplayError, match="format is 'other/v0'"):
        load_replay(tmp_path / "v0.npz")
    lengths = np.array([5, 8, 4])
    np.savez(
        tmp_path / "len.npz",
        format=np.array(FORMAT),
        env_id=np.array("x"),
        **{**arrays, "episode_lengths": lengths},
    )
    with pytest.raises(ReplayError, match="episode_lengths"):
        load_replay(tmp_path / "len.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ReplayError, match="not a readable"):
        load_replay(tmp_path / "junk.npz")


def test_dimension_mismatch_is_rejected() -> None:
    buf = ReplayBuffer("Pendulum-v1", 4, 1)
    with pytest.raises(ReplayError, match="obs_dim 3"):
        buf.add(_traj(3, 0))
