"""A world model trained from the robots' flight recordings: MCAP segments written by the
runtime's recorder → `cloud recordings export --npz` → `distill run --wm-dataset`, with
the steps labelled by the environment's reward function (recordings carry none)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from distill.envs import env_spec, make_env, reward_function
from distill.errors import ReplayError, UnknownEnvError
from distill.offline import load_episodes
from edgeflux.cli import root
from runtime.bundle import generate_signing_key
from runtime.recording import FlightRecorder

TINY = ["--eval-episodes", "2", "--rounds", "2", "--envs-per-round", "2", "--epochs", "2"]


class _Counters:
    def __init__(self) -> None:
        self.ticks = 0
        self.deadline_misses = 0
        self.interventions: Counter[str] = Counter()


def _record_pendulum(directory: Path, episodes: int = 4, steps: int = 60) -> list[float]:
    """Pendulum episodes at 20 Hz through the flight recorder; a skipped tick between
    episodes ends each one in the export. Returns the rewards gymnasium paid."""
    rec = FlightRecorder(directory, quota_bytes=10**8, segment_s=1.0)
    bundle = SimpleNamespace(label="pendulum@1.0.0", root_digest="a" * 64)
    counters, rng, paid, tick = _Counters(), np.random.default_rng(0), [], 0
    for ep in range(episodes):
        env = make_env("Pendulum-v1")
        obs, _ = env.reset(seed=100 + ep)
        tick += 1  # the missing tick between episodes
        for _ in range(steps + 1):
            tick += 1
            action = rng.uniform(-2, 2, 1).astype(np.float32)
            counters.ticks = tick
            rec.record(10**12 + tick * 50_000_000, 10_000, np.float32(obs), action, counters,
                       bundle)  # fmt: skip
            obs, reward, *_ = env.step(action)
            paid.append(float(reward))
        paid.pop()  # the episode's last tick has no next observation: not a step
        rec.drain()
    rec.drain()
    rec._close_segment()
    return paid


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("recordings")
    paid = _record_pendulum(tmp / "rec")
    out = tmp / "robot-1.npz"
    res = CliRunner().invoke(root, ["cloud", "recordings", "export", str(tmp / "rec"),
                                    "--npz", str(out), "--env-id", "Pendulum-v1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"tmp": tmp, "npz": out, "paid": paid}


def test_recorded_steps_are_labelled_with_the_environments_own_rewards(exported: dict) -> None:
    spec = env_spec("Pendulum-v1")
    with pytest.raises(ReplayError, match=r"every reward is zero .*\(--wm-rewards env\)"):
        load_episodes(exported["npz"], spec, 0.25, seed=0)
    train, val = load_episodes(exported["npz"], spec, 0.25, seed=0, rewards="env")
    assert train.num_episodes + val.num_episodes == 4 and val.num_episodes == 1
    got = sorted(np.concatenate([e.rewards for e in (*train.episodes, *val.episodes)]))
    np.testing.assert_allclose(got, sorted(exported["paid"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownEnvError, match=r"no reward function .* 'Reacher-v5'"):
        reward_function("Reacher-v5")


def test_a_world_model_trained_from_recordings_distils_into_a_signed_bundle(
    exported: dict, tmp_path: Path
) -> None:
    generate_signing_key(tmp_path / "sign.pem", tmp_path / "sign.pub")
    args = ["distill", "run", "--teacher", "world-model", "--wm-dataset", str(exported["npz"]),
            "--wm-updates", "30", "--sign-key", str(tmp_path / "sign.pem"), *TINY]  # fmt: skip
    refused = CliRunner().invoke(root, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1 and "every reward is zero" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "a").exists()
    res = CliRunner().invoke(root, [*args, "--wm-rewards", "env", "--out", str(tmp_path / "o"),
                                    "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    v = summary["world_model_validation"]
    assert v["train_episodes"] == 3 and v["val_episodes"] == 1 and v["val_reward_variance"] > 0
    bundle = tmp_path / "o" / "pendulum-v1-0.1.0"
    assert (bundle / "model.sig").is_file()
    prov = json.loads((bundle / "edgeflux.json").read_text())["provenance"]
    assert prov["world_model_dataset_digest"] == summary["world_model_dataset_digest"]
    meta = json.loads((tmp_path / "o" / "world_model" / "config.json").read_text())
    assert meta["extra"]["dataset_rewards"] == "env"
