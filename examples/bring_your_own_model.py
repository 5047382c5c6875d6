"""Your own PyTorch policy, exported to ONNX for EdgeFlux (step 1 of the walk-through).

EdgeFlux runs any single-file ONNX graph that maps observations ``obs[batch, n]`` to
actions ``action[batch, m]``. Here the "model" is a small MLP trained by behaviour
cloning on a hand-written Pendulum controller (energy pumping, then PD balancing);
yours can be anything you trained — only the export below matters::

    python examples/bring_your_own_model.py policy.onnx

then continue with ``examples/bring_your_own_model.sh`` (bundle, sign, verify, run).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn


class PendulumPolicy(nn.Module):
    """obs (cos θ, sin θ, θ̇) → torque in [−2, 2]."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.tanh(self.net(obs))


def expert(obs: np.ndarray) -> np.ndarray:
    """Swing up by pumping energy, balance with PD near the top (g = 10, m = l = 1)."""
    cos, sin, vel = obs[:, 0], obs[:, 1], obs[:, 2]
    theta = np.arctan2(sin, cos)
    energy = 0.5 * vel**2 + 10.0 * (cos - 1.0)  # 0 at the upright rest
    pump = -2.0 * np.sign(energy * vel + 1e-9) * (energy < 0)
    balance = -(12.0 * theta + 2.0 * vel)
    return np.clip(np.where(cos > 0.85, balance, pump), -2.0, 2.0)[:, None].astype(np.float32)


def train(steps: int, seed: int = 0) -> PendulumPolicy:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    policy = PendulumPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(steps):
        theta = rng.uniform(-math.pi, math.pi, 512)
        obs = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-8, 8, 512)], 1)
        obs = obs.astype(np.float32)
        loss = nn.functional.mse_loss(policy(torch.from_numpy(obs)), torch.from_numpy(expert(obs)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


def export(policy: nn.Module, path: Path) -> None:
    """One self-contained ONNX file with a dynamic batch dimension."""
    example = torch.zeros(1, 3)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        policy, (example,), None, dynamo=True, external_data=False,
        input_names=["obs"], output_names=["action"], dynamic_shapes=({0: batch},),
    )  # fmt: skip
    assert program is not None
    program.save(str(path), external_data=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the ONNX policy")
    parser.add_argument("--steps", type=int, default=1500, help="behaviour-cloning steps")
    args = parser.parse_args()
    policy = train(args.steps)
    export(policy, args.out)
    # The graph computes what the module computes (onnxruntime on the CPU).
    import onnxruntime as ort

    obs = np.random.default_rng(1).uniform(-1, 1, (64, 3)).astype(np.float32)
    got = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"]).run(
        None, {"obs": obs}
    )[0]
    want = policy(torch.from_numpy(obs)).detach().numpy()
    print(f"exported {args.out}: max |onnx - torch| = {np.abs(got - want).max():.2e}")


if __name__ == "__main__":
    main()
