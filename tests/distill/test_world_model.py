from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.envs import env_spec
from distill.errors import CheckpointError
from distill.mppi import MPPIConfig
from distill.teachers import WorldModel, WorldModelTeacher
from distill.world_model import (
    PRESETS,
    TDMPC2Model,
    WorldModelConfig,
    load_checkpoint,
    param_count,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = WorldModelConfig(latent_dim=16, mlp_dim=32, enc_dim=32, batch_size=32, activation="silu")


def _model(seed: int = 0, cfg: WorldModelConfig = SMALL) -> TDMPC2Model:
    torch.manual_seed(seed)
    m = TDMPC2Model(3, 1, cfg)
    m.set_generator(torch.Generator().manual_seed(seed))
    return m


def test_cpu_preset_has_about_0_2m_parameters_and_is_a_world_model() -> None:
    m = TDMPC2Model(3, 1, PRESETS["cpu-small"])
    assert 150_000 < param_count(m) < 250_000
    assert isinstance(m, WorldModel)


def test_latent_is_simplicial_normalised_in_groups_of_8() -> None:
    m = _model()
    z = m.encode(torch.randn(5, 3))
    groups = z.reshape(5, -1, 8)
    torch.testing.assert_close(groups.sum(-1), torch.ones(5, 2))
    assert torch.all(z >= 0)
    z2 = m.next(z, torch.zeros(5, 1))
    torch.testing.assert_close(z2.reshape(5, -1, 8).sum(-1), torch.ones(5, 2))


def test_two_hot_round_trips_scalars_through_symlog_bins() -> None:
    m = _model()
    x = torch.tensor([-650.0, -16.3, -0.5, 0.0, 3.0])
    logits = torch.log(m._two_hot(x) + 1e-12)
    torch.testing.assert_close(m._two_hot_inv(logits), x, rtol=1e-3, atol=1e-3)


def test_updates_fit_a_known_reward_and_dynamics() -> None:
    # Data from a linear system with reward -x^2: the model must learn to predict it.
    m = _model(cfg=replace(SMALL, lr=3e-3))
    model_opt, pi_opt = m.make_optimizers()
    rng = np.random.default_rng(0)

    def batch() -> tuple[torch.Tensor, ...]:
        x = rng.uniform(-1, 1, size=(32, 3)).astype(np.float32)
        obs, acts, rews = [x], [], []
        for _ in range(3):
            a = rng.uniform(-1, 1, size=(32, 1)).astype(np.float32)
            rews.append(-(x**2).sum(1))
            x = 0.9 * x + 0.1 * a
            obs.append(x)
            acts.append(a)
        return tuple(torch.as_tensor(np.stack(v)) for v in (obs, acts, rews))

    first = m.update(*batch(), model_opt, pi_opt)
    for _ in range(80):
        last = m.update(*batch(), model_opt, pi_opt)
    assert last["reward_loss"] < 0.6 * first["reward_loss"]
    assert last["consistency"] < 0.3 * first["consistency"]
    obs, acts, rews = batch()
    with torch.no_grad():
        pred = m.reward(m.encode(obs[0]), acts[0])
    assert float((pred - rews[0]).abs().mean()) < 0.6 * float(rews[0].abs().mean())


def test_checkpoint_round_trip_keeps_weights_config_and_digest(tmp_path: Path) -> None:
    m = _model(3)
    digest = save_checkpoint(m, tmp_path / "wm.pt", "Pendulum-v1", {"steps": 5})
    back, payload = load_checkpoint(tmp_path / "wm.pt", obs_dim=3, action_dim=1)
    assert back.digest() == digest == m.digest()
    assert back.cfg == SMALL and payload["extra"] == {"steps": 5}


def test_checkpoint_for_other_dimensions_is_refused(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path / "wm.pt", "Pendulum-v1")
    spec = env_spec("Reacher-v5")
    with pytest.raises(CheckpointError, match=r"Pendulum-v1 with obs_dim 3.*has obs_dim 10"):
        load_checkpoint(tmp_path / "wm.pt", obs_dim=spec.obs_dim, action_dim=spec.act_dim)


def test_corrupt_or_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    m = _model()
    save_checkpoint(m, tmp_path / "wm.pt", "Pendulum-v1")
    payload = torch.load(tmp_path / "wm.pt", weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="do not match the recorded digest"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_disk_full_while_writing_checkpoint_keeps_the_old_one(tmp_path: Path) -> None:
    # A real kernel write failure: RLIMIT_FSIZE makes write() fail with EFBIG mid-file.
    m = _model()
    old = save_checkpoint(m, tmp_path / "wm.pt", "Pendulum-v1")
    before = (tmp_path / "wm.pt").read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        from distill.world_model import TDMPC2Model, WorldModelConfig, save_checkpoint
        from distill.errors import CheckpointError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        m = TDMPC2Model(3, 1, WorldModelConfig(latent_dim=64, mlp_dim=256))
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            save_checkpoint(m, {str(tmp_path / "wm.pt")!r}, "Pendulum-v1")
        except CheckpointError as exc:
            print("REFUSED", exc)
            sys.exit(0)
        sys.exit(1)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "previous checkpoint" in out.stdout
    assert (tmp_path / "wm.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm.pt"]  # no partial temp file
    assert load_checkpoint(tmp_path / "wm.pt")[0].digest() == old


def test_world_model_teacher_plans_bounded_actions_with_any_protocol_model() -> None:
    spec = env_spec("Pendulum-v1")
    cfg = MPPIConfig(horizon=3, num_samples=32, iterations=2, num_elites=4, num_pi_trajs=4)
    teacher = WorldModelTeacher(_model(), spec, cfg, seed=1)
    teacher.reset(3)
    actions = teacher.act(np.zeros((3, 3), dtype=np.float32))
    assert actions.shape == (3, 1) and np.all(np.abs(actions) <= 2.0)
    assert teacher.digest().startswith("sha256:")
