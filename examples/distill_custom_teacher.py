"""Plug your own model or controller into `edgeflux distill`.

Two plug points (both `typing.Protocol`s in `distill.teachers`, so no base class):

1. `Teacher` — any controller that maps a batch of observations to actions in the
   environment's units. Below: a hand-written energy-shaping swing-up controller
   for Pendulum. A DreamerV3 or TD-MPC2 actor trained elsewhere fits the same way:
   load it in `__init__`, run it in `act`.
2. `WorldModel` — a latent model (encode / next / reward / value / pi) in normalised
   action units [-1, 1]. `WorldModelTeacher` plans over it with batched MPPI. Below:
   the true Pendulum equations written as a "latent" model whose latent is
   (theta, theta_dot) itself — swap in your own network and nothing else changes.

Both teachers are then distilled by the same DAgger loop, exported to ONNX,
checked for numeric parity, and evaluated through the runtime's session::

    .venv/bin/python examples/distill_custom_teacher.py          # ~1 minute on 2 cores
    .venv/bin/python examples/distill_custom_teacher.py --quick  # seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np
import torch

from distill.dagger import DaggerConfig, run_dagger
from distill.envs import env_spec
from distill.evaluate import OnnxPolicy, episode_returns
from distill.export import check_parity, export_student, parity_inputs
from distill.mppi import MPPIConfig
from distill.student import StudentConfig
from distill.teachers import Teacher, WorldModel, WorldModelTeacher


class EnergySwingUp:
    """A classical controller as a `Teacher`: pump energy, then balance with PD."""

    def reset(self, n: int) -> None:  # no per-episode state
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        cos, sin, thdot = obs[:, 0], obs[:, 1], obs[:, 2]
        theta = np.arctan2(sin, cos)
        # E = I·θ̇²/2 + m·g·(l/2)·cos θ with I = m·l²/3 (gymnasium's rod), 0 when upright at rest.
        energy = thdot**2 / 6.0 + 5.0 * (cos - 1.0)
        pump = np.where(energy < 0, 2.0 * np.sign(thdot + 1e-6), 0.0)  # power u·θ̇ > 0
        balance = -10.0 * theta - 2.0 * thdot
        u = np.where(cos > 0.92, balance, pump)
        return np.clip(u, -2.0, 2.0)[:, None].astype(np.float32)

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(b"energy-swing-up/v1").hexdigest()


class PendulumPhysics(torch.nn.Module):
    """The `WorldModel` Protocol implemented by known physics (latent = [theta, theta_dot])."""

    action_dim = 1
    discount = 0.99

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]], dim=-1)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        th, thdot = z[..., 0], z[..., 1]
        u = 2.0 * a[..., 0]
        thdot = (thdot + (15.0 * torch.sin(th) + 3.0 * u) * 0.05).clamp(-8, 8)
        return torch.stack([th + thdot * 0.05, thdot], dim=-1)

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        th = torch.remainder(z[..., 0] + torch.pi, 2 * torch.pi) - torch.pi
        return -(th**2 + 0.1 * z[..., 1] ** 2 + 0.004 * a[..., 0] ** 2)

    def value(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[:-1])  # no critic: MPPI plans over rewards only

    def pi(self, z: torch.Tensor) -> torch.Tensor | None:
        return None  # no policy prior

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(b"pendulum-physics/v1").hexdigest()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="tiny budgets (for tests)")
    quick = p.parse_args().quick
    torch.set_num_threads(1)
    spec = env_spec("Pendulum-v1")
    mppi = MPPIConfig(horizon=15, num_samples=64 if quick else 128, iterations=2 if quick else 3,
                      num_elites=8 if quick else 16, num_pi_trajs=0)  # fmt: skip
    model = PendulumPhysics()
    assert isinstance(model, WorldModel)
    teachers: dict[str, Teacher] = {
        "energy swing-up (Teacher)": EnergySwingUp(),
        "physics MPPI (WorldModel)": WorldModelTeacher(model, spec, mppi, seed=0),
    }
    dagger = DaggerConfig(rounds=2, envs_per_round=4, epochs=5) if quick else DaggerConfig()
    seeds = list(range(2000, 2004 if quick else 2020))
    for name, teacher in teachers.items():
        assert isinstance(teacher, Teacher)
        result = run_dagger(spec, teacher, dagger, StudentConfig(), seed=0)
        exported = export_student(result.student, spec, {"teacher": name})
        states, _ = result.data.transitions()
        parity = check_parity(result.student, exported.onnx_bytes, parity_inputs(spec, states))
        t = episode_returns(spec.env_id, teacher, seeds).mean()
        s = episode_returns(
            spec.env_id, OnnxPolicy.unpackaged(exported.onnx_bytes, spec), seeds
        ).mean()
        print(f"{name:<28} teacher {t:8.1f}  student (onnx) {s:8.1f}  parity {parity.passed}")


if __name__ == "__main__":
    main()
