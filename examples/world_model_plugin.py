"""A world-model family in one file: an MLP that predicts the next observation and the
reward (the latent is the observation itself; no critic, no policy prior, so the
teacher plans over predicted rewards). Register it from your package's pyproject.toml:

    [project.entry-points."edgeflux.world_models"]
    mlp-dynamics = "world_model_plugin:FAMILY"

then `TrainConfig(family="mlp-dynamics")` or `edgeflux distill run --wm-family mlp-dynamics`.
"""

import hashlib
import json

import torch
import torch.nn.functional as F
from torch import nn


class MLPDynamics(nn.Module):
    family = "mlp-dynamics"

    def __init__(self, obs_dim, action_dim, hidden=64, lr=1e-3, discount=0.99, horizon=3):
        super().__init__()
        self.obs_dim, self.action_dim, self.discount = obs_dim, action_dim, discount
        self.cfg = {"hidden": hidden, "lr": lr, "discount": discount, "horizon": horizon}
        self.dyn, self.rew = self._mlp(hidden, obs_dim), self._mlp(hidden, 1)
        self.opt = torch.optim.Adam(self.parameters(), lr=lr)

    def _mlp(self, hidden, out):
        return nn.Sequential(
            nn.Linear(self.obs_dim + self.action_dim, hidden), nn.SiLU(), nn.Linear(hidden, out)
        )

    @property
    def device(self):
        return self.dyn[0].weight.device

    def encode(self, obs):  # the latent is the observation
        return obs.to(self.device, torch.float32)

    def next(self, z, a):
        return z + self.dyn(torch.cat([z, a], -1))

    def reward(self, z, a):
        return self.rew(torch.cat([z, a], -1)).squeeze(-1)

    def value(self, z, a):  # no critic: the planner sums predicted rewards
        return torch.zeros(z.shape[:-1], device=z.device)

    def pi(self, z):  # no policy prior
        return None

    def set_generator(self, gen):  # nothing random to route
        pass

    def config_dict(self):
        return dict(self.cfg)

    def digest(self):
        h = hashlib.sha256(json.dumps(self.cfg, sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()

    def train_step(self, obs, actions, rewards, reduce_grads=None):
        za = torch.cat([obs[:-1], actions], -1)
        loss = F.mse_loss(obs[:-1] + self.dyn(za), obs[1:])
        loss = loss + F.mse_loss(self.rew(za).squeeze(-1), rewards)
        self.opt.zero_grad()
        loss.backward()
        if reduce_grads is not None:
            reduce_grads(list(self.parameters()))
        self.opt.step()
        return {"total_loss": float(loss.detach())}


class MLPDynamicsFamily:
    name = "mlp-dynamics"

    def default_config(self, preset):
        return {"hidden": 64}

    def build(self, obs_dim, action_dim, config):
        return MLPDynamics(obs_dim, action_dim, **config)


FAMILY = MLPDynamicsFamily()
