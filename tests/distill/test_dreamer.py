"""The DreamerV3-style family: its pieces (symlog, free bits, discrete latents), a few
training steps, planning and acting through the same interface, save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.dreamer import DreamerConfig, DreamerModel, symexp, symlog
from distill.envs import env_spec
from distill.mppi import MPPIConfig
from distill.teachers import WorldModelTeacher
from distill.train_wm import TrainConfig, train_world_model
from distill.wm_interface import TrainableWorldModel
from distill.wm_registry import load_family
from distill.wm_store import from_pretrained, save_pretrained

TINY = DreamerConfig(deter=16, groups=4, classes=4, hidden=16, imagine_horizon=3, horizon=4,
                     batch_size=8)  # fmt: skip
TINY_MPPI = MPPIConfig(horizon=3, num_samples=32, iterations=2, num_elites=4, num_pi_trajs=4)


def _model(seed: int = 0) -> DreamerModel:
    torch.manual_seed(seed)
    m = DreamerModel(3, 1, TINY)
    m.set_generator(torch.Generator().manual_seed(seed))
    return m


def test_symlog_round_trips_and_compresses_large_magnitudes() -> None:
    x = torch.tensor([-1e4, -16.3, -0.5, 0.0, 3.0, 1e3])
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-5)
    assert float(symlog(torch.tensor(1e4))) < 10


def test_free_bits_clip_the_kl_below_one_nat_and_pass_it_above() -> None:
    m = _model()
    logits = torch.randn(5, 16, requires_grad=True)
    same = m._probs(logits)
    dyn, rep = m.kl_losses(same, same)
    assert float(dyn.detach()) == float(rep.detach()) == 1.0  # KL 0, clipped to the free nat
    rep.backward()
    assert logits.grad is not None and float(logits.grad.abs().max()) == 0.0
    far = m._probs(torch.cat([torch.full((5, 16), -9.0)[:, :15], torch.full((5, 1), 9.0)], 1))
    dyn, _ = m.kl_losses(m._probs(torch.zeros(5, 16)), far)
    assert float(dyn) > 1.0


def test_latents_are_deterministic_state_plus_one_hot_categoricals() -> None:
    m = _model()
    z = m.encode(torch.randn(6, 3))
    assert z.shape == (6, 16 + 4 * 4)
    s = z[:, 16:].reshape(6, 4, 4)
    assert torch.all(s.sum(-1) == 1) and torch.all((s == 0) | (s == 1))
    z2 = m.next(z, torch.zeros(6, 1))
    assert z2.shape == z.shape and m.reward(z, torch.zeros(6, 1)).shape == (6,)
    assert m.value(z, torch.zeros(6, 1)).shape == (6,) and m.pi(z).abs().max() <= 1


def test_a_few_training_steps_change_every_part_and_stay_finite() -> None:
    m = _model()
    assert isinstance(m, TrainableWorldModel)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        stats = m.train_step(torch.randn(5, 8, 3, generator=g),
                             torch.rand(4, 8, 1, generator=g) * 2 - 1,
                             -torch.rand(4, 8, generator=g) * 10)  # fmt: skip
    assert all(np.isfinite(v) for v in stats.values()) and stats["dyn_kl"] >= 1.0
    # The prior is not among them: while its KL is under the free nat it gets no gradient.
    for part in ("_gru", "_decoder", "_reward", "_critic", "_actor", "_post", "_embed"):
        name = next(k for k in before if k.startswith(part))
        assert not torch.equal(before[name], m.state_dict()[name]), part


def test_it_trains_online_plans_and_round_trips_through_a_saved_directory(
    tmp_path: Path,
) -> None:
    fam = load_family("dreamerv3")
    assert fam.default_config("cpu-small")["groups"] == DreamerConfig().groups
    cfg = TrainConfig(family="dreamerv3", total_steps=400, seed_steps=200, num_envs=1,
                      updates_per_step=0.05, mppi=TINY_MPPI)  # fmt: skip
    result = train_world_model(env_spec("Pendulum-v1"), cfg, seed=0)
    assert result.model.family == "dreamerv3" and np.isfinite(result.curves["total_loss"][-1])
    assert np.all(np.abs(result.buffer.episodes[1].actions) <= 2.0)
    digest = save_pretrained(result.model, tmp_path / "wm", "Pendulum-v1")
    back, _ = from_pretrained(tmp_path / "wm", obs_dim=3, action_dim=1)
    assert back.digest() == digest
    back.set_generator(torch.Generator().manual_seed(0))
    teacher = WorldModelTeacher(back, env_spec("Pendulum-v1"), TINY_MPPI)
    teacher.reset(2)
    act = teacher.act(np.zeros((2, 3), dtype=np.float32))
    assert act.shape == (2, 1) and np.all(np.abs(act) <= 2.0)
