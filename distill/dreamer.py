"""A DreamerV3-style world model (Hafner et al., 2023), sized for a CPU, as the
``dreamerv3`` family.

* Recurrent state-space model: a GRU deterministic state h and a discrete
  stochastic state s of `groups` one-hot categoricals with `classes` classes each,
  1% uniform mix in every categorical, straight-through gradients; the latent the
  planner sees is z = [h, s].
* Losses on replayed windows (every window starts from the zero state):
  prediction — observation decoder and reward head regress symlog targets;
  dynamics 0.5·max(1, KL[sg(q) ‖ p]) and representation 0.1·max(1, KL[q ‖ sg(p)])
  (free bits of one nat, summed over the categoricals).
* Imagination actor-critic: from every posterior state the actor imagines
  `imagine_horizon` steps in the prior; λ-returns (λ = 0.95) on predicted rewards
  and critic values; the critic regresses symlog(λ-return); the actor follows
  REINFORCE gradients of the return-normalised advantage (scale: running 5–95%
  range of returns, at least 1) with an entropy bonus.

Kept out at this size: a continue head (the replay data carries no terminations),
two-hot reward and critic heads (symlog regression instead), the slow critic and
adaptive gradient clipping. The planning surface: `encode` is the posterior from the
zero state (its mode), `next` the prior's mode, `reward(z, a)` the reward head on
`next(z, a)`, `value` the critic (the action is ignored), `pi` the actor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DREAMER_FAMILY", "DreamerConfig", "DreamerFamily", "DreamerModel", "symexp", "symlog"]


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


@dataclass(frozen=True)
class DreamerConfig:
    deter: int = 64
    groups: int = 8
    classes: int = 8
    hidden: int = 64
    unimix: float = 0.01
    free_bits: float = 1.0
    dyn_coef: float = 0.5
    rep_coef: float = 0.1
    imagine_horizon: int = 8
    lam: float = 0.95
    entropy_coef: float = 3e-4
    model_lr: float = 6e-4
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    grad_clip_norm: float = 100.0
    return_decay: float = 0.99
    discount: float = 0.975
    horizon: int = 8
    """Length of the replayed training windows."""
    batch_size: int = 32

    def __post_init__(self) -> None:
        sizes = (self.deter, self.groups, self.classes, self.hidden, self.imagine_horizon)
        if min(sizes) < 1 or self.horizon < 1 or self.batch_size < 1:
            raise ValueError(f"dreamerv3 sizes must be >= 1: {asdict(self)}")
        if not 0 <= self.unimix < 1 or not 0 < self.discount <= 1:
            raise ValueError("dreamerv3 needs 0 <= unimix < 1 and 0 < discount <= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DreamerConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PRESETS = {"cpu-small": DreamerConfig()}


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, o))


class DreamerModel(nn.Module):
    family = "dreamerv3"
    ret_scale: torch.Tensor

    def __init__(self, obs_dim: int, action_dim: int, cfg: DreamerConfig) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.cfg = obs_dim, action_dim, cfg
        self.discount = cfg.discount
        stoch = cfg.groups * cfg.classes
        self.latent_dim = cfg.deter + stoch
        self._embed = _mlp(obs_dim, cfg.hidden, cfg.hidden)
        self._gru = nn.GRUCell(stoch + action_dim, cfg.deter)
        self._prior = _mlp(cfg.deter, cfg.hidden, stoch)
        self._post = _mlp(cfg.deter + cfg.hidden, cfg.hidden, stoch)
        self._decoder = _mlp(self.latent_dim, cfg.hidden, obs_dim)
        self._reward = _mlp(self.latent_dim, cfg.hidden, 1)
        self._critic = _mlp(self.latent_dim, cfg.hidden, 1)
        self._actor = _mlp(self.latent_dim, cfg.hidden, 2 * action_dim)
        self.register_buffer("ret_scale", torch.ones(()))
        self._gen: torch.Generator | None = None
        self._opts: list[torch.optim.Optimizer] | None = None

    # -- the planning surface -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.ret_scale.device

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        p = F.softmax(logits.reshape(*logits.shape[:-1], cfg.groups, cfg.classes), dim=-1)
        return (1 - cfg.unimix) * p + cfg.unimix / cfg.classes

    def _mode(self, probs: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(probs.argmax(-1), self.cfg.classes).to(probs.dtype)
        return one_hot.flatten(-2)

    def _sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One-hot sample with straight-through gradients."""
        u = torch.rand(probs.shape, generator=self._gen, device=probs.device)
        idx = (probs.log() - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)
        one_hot = F.one_hot(idx, self.cfg.classes).to(probs.dtype)
        return (one_hot + probs - probs.detach()).flatten(-2)

    def _posterior(self, h: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self._probs(self._post(torch.cat([h, self._embed(symlog(obs))], -1)))

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(self.device, torch.float32)
        h = torch.zeros(*obs.shape[:-1], self.cfg.deter, device=self.device)
        return torch.cat([h, self._mode(self._posterior(h, obs))], -1)

    def _step(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        h, s = z[..., : self.cfg.deter], z[..., self.cfg.deter :]
        x = torch.cat([s, a], -1)
        h2: torch.Tensor = self._gru(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1]))
        return h2.reshape(*z.shape[:-1], self.cfg.deter)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        h = self._step(z, a)
        return torch.cat([h, self._mode(self._probs(self._prior(h)))], -1)

    def _reward_of(self, z: torch.Tensor) -> torch.Tensor:
        return symexp(self._reward(z).squeeze(-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._reward_of(self.next(z, a))

    def value(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return symexp(self._critic(z).squeeze(-1))

    def _dist(self, z: torch.Tensor) -> torch.distributions.Normal:
        mu, std = self._actor(z).chunk(2, dim=-1)
        return torch.distributions.Normal(torch.tanh(mu), 0.1 + 0.9 * torch.sigmoid(std))

    def pi(self, z: torch.Tensor) -> torch.Tensor:
        d = self._dist(z)
        eps = torch.randn(d.loc.shape, generator=self._gen, device=d.loc.device)
        return (d.loc + d.scale * eps).clamp(-1, 1)

    def pi_mode(self, z: torch.Tensor) -> torch.Tensor:
        """The actor's deterministic action (the mean of its Gaussian)."""
        return self._dist(z).loc

    def set_generator(self, gen: torch.Generator) -> None:
        self._gen = gen

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps({"family": self.family, **asdict(self.cfg)},
                                      sort_keys=True).encode())  # fmt: skip
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()

    # -- learning -------------------------------------------------------------------
    def kl_losses(
        self, post: torch.Tensor, prior: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dynamics, representation) losses, each max(free_bits, KL summed over groups)."""

        def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return (p * (p.log() - q.log())).sum((-1, -2))

        fb = self.cfg.free_bits
        dyn = kl(post.detach(), prior).clamp_min(fb).mean()
        rep = kl(post, prior.detach()).clamp_min(fb).mean()
        return dyn, rep

    def train_step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        reduce_grads: Callable[[list[nn.Parameter]], None] | None = None,
    ) -> dict[str, float]:
        cfg = self.cfg
        self.train()
        if self._opts is None:
            wm = [self._embed, self._gru, self._prior, self._post, self._decoder, self._reward]
            self._opts = [
                torch.optim.Adam([p for m in wm for p in m.parameters()], lr=cfg.model_lr),
                torch.optim.Adam(self._actor.parameters(), lr=cfg.actor_lr),
                torch.optim.Adam(self._critic.parameters(), lr=cfg.critic_lr),
            ]
        model_opt, actor_opt, critic_opt = self._opts
        # World model: posterior rollout along the replayed window.
        h = torch.zeros(*obs.shape[1:-1], cfg.deter, device=self.device)
        post = self._posterior(h, obs[0])
        zs, posts, priors = [torch.cat([h, self._sample(post)], -1)], [], []
        for t in range(actions.shape[0]):
            h = self._step(zs[-1], actions[t])
            priors.append(self._probs(self._prior(h)))
            posts.append(self._posterior(h, obs[t + 1]))
            zs.append(torch.cat([h, self._sample(posts[-1])], -1))
        z_all = torch.stack(zs)
        decode = F.mse_loss(self._decoder(z_all), symlog(obs), reduction="none").sum(-1).mean()
        reward = F.mse_loss(self._reward(z_all[1:]).squeeze(-1), symlog(rewards))
        dyn, rep = self.kl_losses(torch.stack(posts), torch.stack(priors))
        model_loss = decode + reward + cfg.dyn_coef * dyn + cfg.rep_coef * rep
        self._optimise(model_opt, model_loss, reduce_grads)
        actor_loss, critic_loss = self._actor_critic(
            z_all.detach().flatten(0, 1), actor_opt, critic_opt, reduce_grads
        )
        return {
            "decoder_loss": float(decode.detach()),
            "reward_loss": float(reward.detach()),
            "dyn_kl": float(dyn.detach()),
            "rep_kl": float(rep.detach()),
            "actor_loss": actor_loss,
            "critic_loss": critic_loss,
            "total_loss": float(model_loss.detach()),
        }

    def _optimise(
        self,
        opt: torch.optim.Optimizer,
        loss: torch.Tensor,
        reduce_grads: Callable[[list[nn.Parameter]], None] | None,
    ) -> None:
        params = [p for g in opt.param_groups for p in g["params"]]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if reduce_grads is not None:
            reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip_norm)
        opt.step()

    def _actor_critic(
        self,
        start: torch.Tensor,
        actor_opt: torch.optim.Optimizer,
        critic_opt: torch.optim.Optimizer,
        reduce_grads: Callable[[list[nn.Parameter]], None] | None,
    ) -> tuple[float, float]:
        cfg = self.cfg
        zs, logps, ents = [start], [], []
        with torch.no_grad():  # imagine in the prior; the model is not trained here
            acts = []
            for _ in range(cfg.imagine_horizon):
                a = self.pi(zs[-1])
                acts.append(a)
                h = self._step(zs[-1], a)
                zs.append(torch.cat([h, self._sample(self._probs(self._prior(h)))], -1))
            z = torch.stack(zs)  # (T+1, N, latent)
            rew = self._reward_of(z[1:])
            val = symexp(self._critic(z).squeeze(-1))
            ret = [val[-1]]
            for t in reversed(range(cfg.imagine_horizon)):
                nxt = (1 - cfg.lam) * val[t + 1] + cfg.lam * ret[0]
                ret.insert(0, rew[t] + cfg.discount * nxt)
            returns = torch.stack(ret[:-1])  # (T, N)
            lo, hi = torch.quantile(
                returns.flatten(), torch.tensor([0.05, 0.95], device=returns.device)
            )
            self.ret_scale.lerp_((hi - lo).to(self.ret_scale), 1 - cfg.return_decay)
            adv = (returns - val[:-1]) / self.ret_scale.clamp_min(1.0)
        for t in range(cfg.imagine_horizon):
            d = self._dist(z[t])
            logps.append(d.log_prob(acts[t]).sum(-1))
            ents.append(d.entropy().sum(-1))
        actor_loss = (
            -(adv * torch.stack(logps)).mean() - cfg.entropy_coef * torch.stack(ents).mean()
        )
        self._optimise(actor_opt, actor_loss, reduce_grads)
        critic_loss = F.mse_loss(self._critic(z[:-1]).squeeze(-1), symlog(returns))
        self._optimise(critic_opt, critic_loss, reduce_grads)
        return float(actor_loss.detach()), float(critic_loss.detach())


class DreamerFamily:
    """The ``dreamerv3`` family; preset ``cpu-small``."""

    name = "dreamerv3"

    def default_config(self, preset: str) -> dict[str, Any]:
        if preset not in PRESETS:
            raise ValueError(f"unknown dreamerv3 preset {preset!r}: {sorted(PRESETS)}")
        return asdict(PRESETS[preset])

    def build(self, obs_dim: int, action_dim: int, config: Mapping[str, Any]) -> DreamerModel:
        return DreamerModel(obs_dim, action_dim, DreamerConfig.from_dict(config))


DREAMER_FAMILY = DreamerFamily()
