"""Offline training from a directory of .npz episodes: validation of each file, the
train/validation split, the validation error, and distillation into a signed bundle."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner

from distill.envs import env_spec
from distill.errors import ReplayError
from distill.offline import OfflineConfig, load_episodes, train_offline
from distill.wm_store import from_pretrained
from edgeflux.cli import root

SPEC = env_spec("Pendulum-v1")
TINY = ["--eval-episodes", "2", "--rounds", "2", "--envs-per-round", "2", "--epochs", "2",
        "--mppi-samples", "32", "--mppi-iterations", "2"]  # fmt: skip


def _record(directory: Path, episodes: int, steps: int = 60) -> Path:
    """Random-action Pendulum episodes, one .npz each, as a recorder would write them."""
    directory.mkdir(parents=True, exist_ok=True)
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    for i in range(episodes):
        obs, _ = env.reset(seed=1000 + i)
        o, a, r = [obs], [], []
        for _ in range(steps):
            act = rng.uniform(-2, 2, size=1).astype(np.float32)
            obs, rew, *_ = env.step(act)
            o.append(obs)
            a.append(act)
            r.append(rew)
        np.savez(directory / f"ep{i:03d}.npz", observations=np.array(o, np.float32),
                 actions=np.array(a), rewards=np.array(r, np.float32),
                 terminations=np.zeros(steps, bool))  # fmt: skip
    env.close()
    return directory


def test_episodes_split_by_file_seeded_and_disjoint(tmp_path: Path) -> None:
    d = _record(tmp_path / "data", 5, steps=10)
    train, val = load_episodes(d, SPEC, 0.2, seed=3)
    assert (train.num_episodes, val.num_episodes) == (4, 1)
    again_train, again_val = load_episodes(d, SPEC, 0.2, seed=3)
    assert again_val.digest() == val.digest() and again_train.digest() == train.digest()
    held = {e.obs.tobytes() for e in val.episodes}
    assert not held & {e.obs.tobytes() for e in train.episodes}


def _spoil(path: Path, **changes: object) -> None:
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    np.savez(path, **data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rewards": None}, "missing rewards"),
        ({"actions": np.zeros((10, 2), np.float32)}, "actions has shape (10, 2), expected (10, 1)"),
        ({"rewards": np.full(10, np.nan, np.float32)}, "rewards must be finite numbers"),
        ({"terminations": np.eye(10, dtype=bool)[2]}, "terminations is true at step 2"),
        ({"terminations": np.zeros(10, np.int8)}, "terminations must be bool"),
        ({"actions": np.full((10, 1), 3.0, np.float32)}, "actions leave the bounds"),
    ],
)
def test_a_bad_episode_file_is_refused_naming_the_file_and_field(
    tmp_path: Path, change: dict, message: str
) -> None:
    d = _record(tmp_path / "data", 3, steps=10)
    _spoil(d / "ep001.npz", **change)
    with pytest.raises(ReplayError) as err:
        load_episodes(d, SPEC, 0.2, seed=0)
    assert message in str(err.value) and "ep001.npz" in str(err.value)
    assert "\n" not in str(err.value)


def test_too_few_or_unreadable_files_are_refused(tmp_path: Path) -> None:
    d = _record(tmp_path / "data", 1, steps=10)
    with pytest.raises(ReplayError, match="at least 2 are needed"):
        load_episodes(d, SPEC, 0.2, seed=0)
    (d / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ReplayError, match=r"junk\.npz: not a readable \.npz episode"):
        load_episodes(d, SPEC, 0.2, seed=0)


def test_offline_training_lowers_the_held_out_reward_error(tmp_path: Path) -> None:
    d = _record(tmp_path / "data", 5)
    result = train_offline(SPEC, d, OfflineConfig(updates=150, val_windows=64), seed=0)
    v = result.validation
    assert (v["train_episodes"], v["val_episodes"]) == (4, 1)
    assert np.isfinite(v["val_reward_mse"])
    assert v["val_reward_mse"] < 0.5 * v["val_reward_mse_untrained"], v


@pytest.mark.slow
def test_a_world_model_trained_from_a_dataset_distils_into_a_signed_bundle(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    res = CliRunner().invoke(root, ["bundle", "keygen", "--private", str(keys / "k.pem"),
                                    "--public", str(keys / "k.pub")])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = _record(tmp_path / "data", 4)
    res = CliRunner().invoke(root, ["distill", "run", "--teacher", "world-model",
                                    "--wm-dataset", str(d), "--wm-updates", "30",
                                    "--sign-key", str(keys / "k.pem"),
                                    "--out", str(tmp_path / "o"), "--json", *TINY])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["signed"] and summary["world_model_validation"]["val_episodes"] == 1
    model, meta = from_pretrained(tmp_path / "o" / "world_model", obs_dim=3, action_dim=1)
    bundle = Path(summary["bundle_dir"])
    prov = json.loads((bundle / "edgeflux.json").read_text())["provenance"]
    assert prov["world_model_digest"] == model.digest()
    assert prov["world_model_dataset_digest"] == meta["extra"]["train_dataset_digest"]
    assert (bundle / "model.sig").is_file()
