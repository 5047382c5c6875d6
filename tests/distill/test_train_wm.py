"""The learned world-model path at small budgets: online training, torchrun/gloo, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from distill import seeds
from distill.envs import discount_for, env_spec
from distill.mppi import MPPIConfig
from distill.train_wm import TrainConfig, train_world_model
from distill.wm_store import from_pretrained
from distill.world_model import PRESETS, TDMPC2Model, load_checkpoint
from edgeflux.cli import root

REPO = Path(__file__).resolve().parents[2]
TINY_MPPI = MPPIConfig(horizon=3, num_samples=32, iterations=2, num_elites=4, num_pi_trajs=4)


@pytest.mark.slow
def test_online_training_plans_collects_and_updates() -> None:
    spec = env_spec("Pendulum-v1")
    cfg = TrainConfig(total_steps=400, seed_steps=200, num_envs=1, updates_per_step=0.1,
                      mppi=TINY_MPPI)  # fmt: skip
    torch.manual_seed(0)
    fresh = TDMPC2Model(3, 1, replace(PRESETS["cpu-small"], discount=discount_for(200)))
    seen: list[int] = []
    result = train_world_model(spec, cfg, seed=0, on_progress=lambda d, t, s: seen.append(d))
    assert result.steps == 400 and seen == [200, 400]
    assert result.buffer.num_episodes == 2 and len(result.buffer) == 400
    # Episode 2 was planned by MPPI over the model, not random: actions differ in kind.
    acts = result.buffer.episodes[1].actions
    assert np.all(np.abs(acts) <= 2.0)
    assert not np.isnan(result.curves["total_loss"][-1])  # 20 real updates happened
    assert result.model.digest() != fresh.digest()
    # Every environment seed is recorded, from the training range only.
    assert len(result.env_seeds) == 2 and all(s in seeds.TRAINING for s in result.env_seeds)


@pytest.mark.slow
def test_torchrun_two_gloo_processes_end_with_identical_weights(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "distill.train_wm", "--steps", "400", "--seed-steps", "200", "--num-envs", "1",
         "--utd", "0.05", "--out", str(tmp_path / "wm.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d) digest (sha256:[0-9a-f]+)", out.stdout))
    assert set(digests) == {"0", "1"}, out.stdout
    assert digests["0"] == digests["1"]  # gradients were averaged across the two ranks
    model, payload = load_checkpoint(tmp_path / "wm.pt", obs_dim=3, action_dim=1)
    assert model.digest() == digests["0"] and payload["extra"]["world_size"] == 2
    assert len(payload["extra"]["env_seeds"]) == 4  # 2 episodes on each of the 2 ranks


@pytest.mark.slow
def test_distill_run_with_a_world_model_trained_online(tmp_path: Path) -> None:
    res = CliRunner().invoke(root, [
        "distill", "run", "--teacher", "world-model", "--out", str(tmp_path / "o"),
        "--wm-steps", "400", "--wm-seed-steps", "200", "--wm-envs", "1",
        "--wm-utd", "0.1",
        "--eval-episodes", "2", "--rounds", "2", "--envs-per-round", "2", "--epochs", "2",
        "--mppi-samples", "32", "--mppi-iterations", "2", "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["teacher"] == "world-model" and summary["numeric_parity"]["passed"]
    assert summary["world_model_digest"].startswith("sha256:")
    curves = json.loads((tmp_path / "o" / "curves.json").read_text())
    assert curves["world_model"]["step"] == [200.0, 400.0]
    _, payload = from_pretrained(tmp_path / "o" / "world_model", obs_dim=3, action_dim=1)
    manifest = json.loads((tmp_path / "o" / "pendulum-v1-0.1.0" / "edgeflux.json").read_text())
    assert manifest["provenance"]["teacher_kind"] == "world-model"
    assert payload["digest"] in summary["world_model_digest"]
    recorded = manifest["provenance"]["world_model_seeds"]
    assert recorded == payload["extra"]["env_seeds"] and len(recorded) == 2
