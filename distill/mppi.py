"""Batched MPPI over any differentiable-or-not rollout model (TD-MPC2's planner, §3.2/App. D).

Actions live in the normalised box [-1, 1]^A; a caller maps them to environment
units. One call plans for B independent environments at once: sampling, rollout
and the elite update are all batched over B, so the cost of a planning step for
a whole vector of environments is one set of tensor ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

__all__ = ["MPPIConfig", "mppi_plan"]


@dataclass(frozen=True)
class MPPIConfig:
    """Planner settings (defaults: TD-MPC2's)."""

    horizon: int = 3
    """Planning horizon in environment steps."""
    num_samples: int = 512
    """Trajectories sampled per iteration (policy-prior ones included)."""
    iterations: int = 6
    """Refinements of the sampling distribution per planning step."""
    num_elites: int = 64
    """Best trajectories that update the mean and std."""
    num_pi_trajs: int = 24
    """Trajectories proposed by the world model's policy prior (0 if it has none)."""
    temperature: float = 0.5
    """Inverse temperature of the elite weights exp(temperature * (G - max G))."""
    min_std: float = 0.05
    max_std: float = 2.0

    def __post_init__(self) -> None:
        if min(self.horizon, self.num_samples, self.iterations, self.num_elites) < 1:
            raise ValueError(f"MPPI sizes must be >= 1: {asdict(self)}")
        if not self.num_pi_trajs < self.num_samples or self.num_elites > self.num_samples:
            raise ValueError("MPPI needs num_pi_trajs < num_samples and num_elites <= num_samples")
        if not 0 < self.min_std <= self.max_std:
            raise ValueError("MPPI needs 0 < min_std <= max_std")


# value_fn(actions (B, N, H, A) in [-1, 1]) -> returns (B, N)
ValueFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def mppi_plan(
    value_fn: ValueFn,
    batch: int,
    action_dim: int,
    cfg: MPPIConfig,
    generator: torch.Generator,
    *,
    init_mean: torch.Tensor | None = None,
    prior_actions: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine a Gaussian over action sequences; return its (mean, std), each (B, H, A).

    `init_mean` warm-starts from the previous step's plan (shifted by the caller);
    `prior_actions` (B, P, H, A) are policy-prior proposals added to every
    iteration's samples, as TD-MPC2 does.
    """
    b, h, a, n = batch, cfg.horizon, action_dim, cfg.num_samples
    mean = init_mean.clone() if init_mean is not None else torch.zeros(b, h, a, device=device)
    std = torch.full((b, h, a), cfg.max_std, device=device)
    n_prior = 0 if prior_actions is None else prior_actions.shape[1]
    for _ in range(cfg.iterations):
        noise = torch.randn(b, n - n_prior, h, a, generator=generator, device=device)
        actions = (mean[:, None] + std[:, None] * noise).clamp(-1.0, 1.0)
        if prior_actions is not None:
            actions = torch.cat([prior_actions, actions], dim=1)
        value = torch.nan_to_num(value_fn(actions), nan=-1e9)  # a NaN trajectory is never elite
        elite_value, elite_idx = torch.topk(value, cfg.num_elites, dim=1)
        elites = torch.gather(actions, 1, elite_idx[:, :, None, None].expand(-1, -1, h, a))
        # Eq. (4)-(5) of TD-MPC2: softmax weights over elites, weighted mean and std.
        score = torch.softmax(cfg.temperature * elite_value, dim=1)[:, :, None, None]
        mean = (score * elites).sum(1)
        std = (score * (elites - mean[:, None]) ** 2).sum(1).sqrt().clamp(cfg.min_std, cfg.max_std)
    return mean, std
