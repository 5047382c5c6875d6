"""A TD-MPC2-style, decoder-free world model (Hansen, Su & Wang, ICLR 2024).

Components (all MLPs of Linear → LayerNorm → Mish, Appendix A):

* encoder h: obs → z, with a SimNorm latent (softmax over groups of 8, §3.1);
* latent dynamics d: (z, a) → z', also SimNorm;
* reward head R: (z, a) → logits over a discrete regression of symlog(reward);
* Q ensemble (num_q heads, 1% dropout) with EMA target copies (τ = 0.01);
* policy prior p: z → tanh-squashed Gaussian, maximum-entropy objective.

`update` implements the paper's losses (Eq. 3): consistency (MSE to the
stop-gradient encoding of the next observation), reward and value cross-entropy
against two-hot targets, all weighted by ρ^t over a 3-step unroll, with weights
20 / 0.1 / 0.1; then the policy loss (Eq. 6) with a running 5–95% Q scale. The
code is device-agnostic: every tensor follows the model's device (CPU by default).
It implements `distill.wm_interface.TrainableWorldModel`; `TDMPC2_FAMILY` is the
built-in family ``tdmpc2`` of `distill.wm_registry`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import CheckpointError
from runtime.atomicio import atomic_writer

__all__ = [
    "PRESETS",
    "TDMPC2_FAMILY",
    "TDMPC2Family",
    "TDMPC2Model",
    "WorldModelConfig",
    "load_checkpoint",
    "param_count",
    "pick_device",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "edgeflux.world-model/v1"
_ACTS: dict[str, type[nn.Module]] = {"mish": nn.Mish, "silu": nn.SiLU}


@dataclass(frozen=True)
class WorldModelConfig:
    latent_dim: int = 64
    """Size of z (a multiple of simnorm_dim)."""
    mlp_dim: int = 128
    """Width of the dynamics, reward, Q and policy MLPs."""
    enc_dim: int = 128
    """Width of the encoder's hidden layer."""
    num_q: int = 2
    """Q ensemble size (TD-MPC2 uses 5; 2 on CPU)."""
    q_dropout: float = 0.01
    """Dropout after the first layer of each Q head."""
    activation: str = "mish"
    """Hidden activation: mish (TD-MPC2) or silu (same shape, ≈3× faster on CPU)."""
    simnorm_dim: int = 8
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    """Two-hot support, in symlog space."""
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    batch_size: int = 256
    horizon: int = 3
    """Unroll length of the losses (and the planner's default horizon)."""
    rho: float = 0.5
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    entropy_coef: float = 1e-4
    tau: float = 0.01
    grad_clip_norm: float = 20.0
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    discount: float = 0.975
    """Set from the episode length by the trainer (TD-MPC2's heuristic)."""

    def __post_init__(self) -> None:
        if self.latent_dim % self.simnorm_dim:
            raise ValueError("latent_dim must be a multiple of simnorm_dim")
        if self.activation not in _ACTS:
            raise ValueError(f"activation must be one of {sorted(_ACTS)}, not {self.activation!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PRESETS: dict[str, WorldModelConfig] = {
    # ≈0.18M parameters: what 2 CPU cores train in minutes.
    # Mish and dropout cost more than the matrix products on CPU (profiled), so the CPU
    # preset uses SiLU and no Q dropout; the GPU presets keep TD-MPC2's choices.
    "cpu-small": WorldModelConfig(activation="silu", q_dropout=0.0),
    # ≈1M and ≈5M: TD-MPC2's own smallest sizes, for a GPU.
    "gpu-1m": WorldModelConfig(latent_dim=128, mlp_dim=384, enc_dim=256, num_q=5),
    "gpu-5m": WorldModelConfig(latent_dim=512, mlp_dim=512, enc_dim=256, num_q=5),
}


class _SimNorm(nn.Module):
    """Simplicial normalisation: softmax within each group of `dim` latent units (§3.1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.reshape(*shape[:-1], -1, self.dim), dim=-1).reshape(shape)


def _mlp(
    in_dim: int,
    hidden: list[int],
    out_dim: int,
    out_act: nn.Module | None,
    act: str,
    dropout: float = 0.0,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for i in range(len(hidden)):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if dropout and i == 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.LayerNorm(dims[i + 1]), _ACTS[act]()]
    layers.append(nn.Linear(dims[-1], out_dim))
    if out_act is not None:
        layers += [nn.LayerNorm(out_dim), out_act]
    return nn.Sequential(*layers)


def _symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def _symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (torch.exp(x.abs()) - 1)


class TDMPC2Model(nn.Module):
    """The world model. Actions are normalised to [-1, 1]."""

    bins: torch.Tensor
    q_scale: torch.Tensor
    family = "tdmpc2"

    def __init__(self, obs_dim: int, action_dim: int, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.cfg = obs_dim, action_dim, cfg
        self.discount = cfg.discount
        za = cfg.latent_dim + action_dim
        hid, act = [cfg.mlp_dim, cfg.mlp_dim], cfg.activation
        simnorm = _SimNorm(cfg.simnorm_dim)
        self._encoder = _mlp(obs_dim, [cfg.enc_dim], cfg.latent_dim, simnorm, act)
        self._dynamics = _mlp(za, hid, cfg.latent_dim, simnorm, act)
        self._reward = _mlp(za, hid, cfg.num_bins, None, act)
        self._pi = _mlp(cfg.latent_dim, hid, 2 * action_dim, None, act)
        self._qs = nn.ModuleList(
            _mlp(za, hid, cfg.num_bins, None, act, dropout=cfg.q_dropout) for _ in range(cfg.num_q)
        )
        # Zero-initialised output layers: reward and Q start at exactly 0 (Appendix A).
        for head in [self._reward, *self._qs]:
            last = head[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self._target_qs = copy.deepcopy(self._qs).requires_grad_(False)
        self.register_buffer("bins", torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins))
        self.register_buffer("q_scale", torch.ones(()))
        self._gen: torch.Generator | None = None
        self._cpu_gen: torch.Generator | None = None
        self._opts: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None

    # -- the WorldModel Protocol ------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.bins.device

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        z: torch.Tensor = self._encoder(obs.to(self.device, torch.float32))
        return z

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        nxt: torch.Tensor = self._dynamics(torch.cat([z, a], dim=-1))
        return nxt

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._two_hot_inv(self._reward(torch.cat([z, a], dim=-1)))

    def value(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Mean of two randomly chosen Q heads (TD-MPC2's planning value)."""
        return self._q(z, a, target=False, reduce="avg")

    def pi(self, z: torch.Tensor) -> torch.Tensor:
        return self._pi_sample(z)[0]

    def pi_mode(self, z: torch.Tensor) -> torch.Tensor:
        """The policy prior's deterministic action: tanh of the Gaussian's mean."""
        mu, _ = self._pi(z).chunk(2, dim=-1)
        return torch.tanh(mu)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def train_step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        reduce_grads: Callable[[list[nn.Parameter]], None] | None = None,
    ) -> dict[str, float]:
        """`update` with the model's own optimisers (made on the first step)."""
        if self._opts is None:
            self._opts = self.make_optimizers()
        return self.update(obs, actions, rewards, *self._opts, reduce_grads)

    def digest(self) -> str:
        h = hashlib.sha256(repr(sorted(asdict(self.cfg).items())).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()

    # -- internals ----------------------------------------------------------------
    def _two_hot_inv(self, logits: torch.Tensor) -> torch.Tensor:
        return _symexp((F.softmax(logits, dim=-1) * self.bins).sum(-1))

    def _two_hot(self, x: torch.Tensor) -> torch.Tensor:
        """Soft two-hot target over the bins for scalar targets x (Appendix A)."""
        cfg = self.cfg
        width = (cfg.vmax - cfg.vmin) / (cfg.num_bins - 1)
        pos = (_symlog(x).clamp(cfg.vmin, cfg.vmax) - cfg.vmin) / width
        lo = pos.floor().clamp(0, cfg.num_bins - 1)
        hi = (lo + 1).clamp(max=cfg.num_bins - 1)
        frac = (pos - lo).unsqueeze(-1)
        target = torch.zeros(*x.shape, cfg.num_bins, device=x.device)
        target.scatter_(-1, lo.long().unsqueeze(-1), 1 - frac)
        target.scatter_add_(-1, hi.long().unsqueeze(-1), frac)
        return target

    def _soft_ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(self._two_hot(target) * F.log_softmax(logits, dim=-1)).sum(-1)

    def _q(self, z: torch.Tensor, a: torch.Tensor, *, target: bool, reduce: str) -> torch.Tensor:
        heads = self._target_qs if target else self._qs
        za = torch.cat([z, a], dim=-1)
        if reduce == "all":
            return torch.stack([q(za) for q in heads])  # logits (num_q, ..., bins)
        idx = torch.randperm(len(heads), generator=self._cpu_gen)[:2].tolist()
        values = torch.stack([self._two_hot_inv(heads[i](za)) for i in idx])
        return values.min(0).values if reduce == "min" else values.mean(0)

    def _pi_sample(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled squashed action and its log-probability (SAC-style correction)."""
        cfg = self.cfg
        mu, log_std = self._pi(z).chunk(2, dim=-1)
        log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (
            torch.tanh(log_std) + 1
        )
        eps = torch.randn(mu.shape, generator=self._gen, device=mu.device)
        pre = mu + eps * log_std.exp()
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        action = torch.tanh(pre)
        log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        return action, log_prob

    def set_generator(self, gen: torch.Generator) -> None:
        """Route every random draw (policy noise, Q subsets) through `gen` (reproducibility)."""
        self._gen = gen
        self._cpu_gen = torch.Generator().manual_seed(gen.initial_seed())

    # -- learning -----------------------------------------------------------------
    def make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        cfg = self.cfg
        groups: list[dict[str, Any]] = [
            {"params": self._encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale},
            {"params": self._dynamics.parameters()},
            {"params": self._reward.parameters()},
            {"params": self._qs.parameters()},
        ]
        model_opt = torch.optim.Adam(groups, lr=cfg.lr)
        pi_opt = torch.optim.Adam(self._pi.parameters(), lr=cfg.lr, eps=1e-5)
        return model_opt, pi_opt

    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        model_opt: torch.optim.Optimizer,
        pi_opt: torch.optim.Optimizer,
        reduce_grads: Callable[[list[nn.Parameter]], None] | None = None,
    ) -> dict[str, float]:
        """One gradient step on windows: obs (H+1, B, o), actions (H, B, a), rewards (H, B).

        `reduce_grads` (data-parallel training) averages gradients across processes
        before each optimiser step.
        """
        cfg = self.cfg
        h = actions.shape[0]
        self.train()
        with torch.no_grad():
            next_z = self.encode(obs[1:])
            td_target = rewards + self.discount * self._q(
                next_z, self.pi(next_z), target=True, reduce="min"
            )
        # Latent rollout from the first encoding (Eq. 3).
        z = self.encode(obs[0])
        zs = [z]
        consistency = torch.zeros((), device=self.device)
        for t in range(h):
            z = self.next(z, actions[t])
            consistency = consistency + cfg.rho**t * F.mse_loss(z, next_z[t])
            zs.append(z)
        z_all = torch.stack(zs[:-1])  # (H, B, latent)
        za = torch.cat([z_all, actions], dim=-1)
        reward_logits = self._reward(za)
        q_logits = torch.stack([q(za) for q in self._qs])  # (Q, H, B, bins)
        weights = cfg.rho ** torch.arange(h, device=self.device, dtype=torch.float32)
        reward_loss = (self._soft_ce(reward_logits, rewards).mean(-1) * weights).sum()
        value_loss = (
            self._soft_ce(q_logits, td_target.expand(len(self._qs), -1, -1)).mean(-1) * weights
        ).sum()
        loss = (
            cfg.consistency_coef * consistency / h
            + cfg.reward_coef * reward_loss / h
            + cfg.value_coef * value_loss / (h * len(self._qs))
        )
        model_opt.zero_grad(set_to_none=True)
        loss.backward()
        model_params = [p for g in model_opt.param_groups for p in g["params"]]
        if reduce_grads is not None:
            reduce_grads(model_params)
        model_grad = torch.nn.utils.clip_grad_norm_(model_params, cfg.grad_clip_norm)
        model_opt.step()

        pi_loss = self._update_pi(torch.stack(zs).detach(), pi_opt, reduce_grads)
        with torch.no_grad():
            for p, tp in zip(self._qs.parameters(), self._target_qs.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        return {
            "consistency": float(consistency.detach()) / h,
            "reward_loss": float(reward_loss.detach()) / h,
            "value_loss": float(value_loss.detach()) / (h * len(self._qs)),
            "pi_loss": pi_loss,
            "total_loss": float(loss.detach()),
            "grad_norm": float(model_grad),
        }

    def _update_pi(
        self,
        zs: torch.Tensor,
        pi_opt: torch.optim.Optimizer,
        reduce_grads: Callable[[list[nn.Parameter]], None] | None,
    ) -> float:
        cfg = self.cfg
        self._qs.requires_grad_(False)
        try:
            action, log_prob = self._pi_sample(zs)
            q = self._q(zs, action, target=False, reduce="avg")
            with torch.no_grad():  # running 5-95% percentile range of Q (Eq. 6 scale)
                lo, hi = torch.quantile(q[0].float(), torch.tensor([0.05, 0.95], device=q.device))
                self.q_scale.lerp_((hi - lo).clamp_min(1.0), cfg.tau)
            weights = cfg.rho ** torch.arange(len(zs), device=self.device, dtype=torch.float32)
            loss = ((cfg.entropy_coef * log_prob - q / self.q_scale).mean(-1) * weights).mean()
            pi_opt.zero_grad(set_to_none=True)
            loss.backward()
            if reduce_grads is not None:
                reduce_grads(list(self._pi.parameters()))
            torch.nn.utils.clip_grad_norm_(self._pi.parameters(), cfg.grad_clip_norm)
            pi_opt.step()
        finally:
            self._qs.requires_grad_(True)
        return float(loss.detach())


class TDMPC2Family:
    """The ``tdmpc2`` family: presets are the keys of `PRESETS`."""

    name = "tdmpc2"

    def default_config(self, preset: str) -> dict[str, Any]:
        if preset not in PRESETS:
            raise ValueError(f"unknown tdmpc2 preset {preset!r}: {sorted(PRESETS)}")
        return asdict(PRESETS[preset])

    def build(self, obs_dim: int, action_dim: int, config: Mapping[str, Any]) -> TDMPC2Model:
        return TDMPC2Model(obs_dim, action_dim, WorldModelConfig.from_dict(dict(config)))


TDMPC2_FAMILY = TDMPC2Family()


# -- checkpoints ------------------------------------------------------------------
def save_checkpoint(
    model: TDMPC2Model, path: str | Path, env_id: str, extra: dict[str, Any] | None = None
) -> str:
    """Atomically write config, dimensions, weights and digest; returns the digest.

    A failure while writing (disk full, quota) leaves any previous checkpoint at
    `path` untouched and no partial file behind.
    """
    digest = model.digest()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "env_id": env_id,
        "obs_dim": model.obs_dim,
        "action_dim": model.action_dim,
        "config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "digest": digest,
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    try:
        with atomic_writer(path) as fh:
            fh.write(buf.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc.strerror or exc}; "
            "the previous checkpoint (if any) is unchanged"
        ) from exc
    return digest


def load_checkpoint(
    path: str | Path,
    *,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[TDMPC2Model, dict[str, Any]]:
    """Load a checkpoint; with obs_dim/action_dim given, refuse one made for other shapes."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises pickle/zip errors of many kinds
        raise CheckpointError(f"{path}: not a readable world-model checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an {CHECKPOINT_FORMAT} checkpoint")
    for name, want in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if want is not None and payload[name] != want:
            raise CheckpointError(
                f"{path}: checkpoint was trained on {payload['env_id']} with {name} "
                f"{payload[name]}, but the environment has {name} {want}"
            )
    model = TDMPC2Model(
        payload["obs_dim"], payload["action_dim"], WorldModelConfig.from_dict(payload["config"])
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored config ({exc})") from exc
    model = model.to(device)
    if model.digest() != payload["digest"]:
        raise CheckpointError(f"{path}: weights do not match the recorded digest")
    return model, payload


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; never a hard-coded cuda:0."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
