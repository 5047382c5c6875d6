"""The student: a small MLP from observation to action, exported to ONNX.

Everything the robot needs is inside the graph: the observation normaliser
``(obs - mean) / std`` in front and the tanh squashing into the action box
``mid + half * tanh(x)`` at the back, so the runtime feeds raw observations and
gets actions within bounds. Activations: ReLU, ELU or SiLU — not Mish, which is
slower in onnxruntime and missing from older TensorRT parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["ACTIVATIONS", "Student", "StudentConfig", "TorchPolicy"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


@dataclass(frozen=True)
class StudentConfig:
    hidden: tuple[int, ...] = (64, 64)
    """Widths of the hidden layers."""
    activation: str = "elu"
    """One of relu, elu, silu."""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"student activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"student hidden widths must be >= 1, got {self.hidden}")


class Student(nn.Module):
    """obs (B, obs_dim) float32 -> action (B, act_dim) float32 within [act_low, act_high]."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_mid: torch.Tensor
    act_half: torch.Tensor

    def __init__(
        self, obs_dim: int, act_low: np.ndarray, act_high: np.ndarray, cfg: StudentConfig
    ) -> None:
        super().__init__()
        self.cfg = cfg
        act = ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        width = obs_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, len(act_low)))
        self.net = nn.Sequential(*layers)
        low = torch.as_tensor(act_low, dtype=torch.float32)
        high = torch.as_tensor(act_high, dtype=torch.float32)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("act_mid", (high + low) / 2)
        self.register_buffer("act_half", (high - low) / 2)

    def set_normaliser(self, obs: np.ndarray) -> None:
        """Fit mean/std to observations; std floored so constant features stay finite."""
        o = torch.as_tensor(obs, dtype=torch.float32)
        self.obs_mean.copy_(o.mean(0))
        self.obs_std.copy_(o.std(0).clamp_min(1e-3) if len(o) > 1 else torch.ones(o.shape[1]))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = (obs - self.obs_mean) / self.obs_std
        return self.act_mid + self.act_half * torch.tanh(self.net(x))


class TorchPolicy:
    """Adapter: a torch `Student` as a policy for `distill.evaluate` (no grad, CPU numpy)."""

    def __init__(self, student: Student) -> None:
        self.student = student.eval()

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        out: torch.Tensor = self.student(torch.as_tensor(obs, dtype=torch.float32))
        return out.numpy().astype(np.float32)
