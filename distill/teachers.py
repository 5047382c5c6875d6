"""Teachers: what the student imitates. Two Protocols are the plug points.

* `Teacher` — anything that maps a batch of observations to actions in the
  environment's units. Implement it to distil any controller (a scripted one, a
  DreamerV3 actor, a TD-MPC2 agent trained elsewhere).
* `WorldModel` — a latent model (encode, next, reward, value, policy prior) in
  normalised action units [-1, 1]. `WorldModelTeacher` plans over any
  `WorldModel` with batched MPPI, so a user who brings only a model gets a teacher;
  `ActorTeacher` acts with the model's own policy prior (its deterministic mode), a
  few hundred times cheaper per step than planning.

`OracleMPPITeacher` plans over Pendulum's *known* dynamics (the equations of
gymnasium's Pendulum-v1, with the same variant parameters), so distillation and
parity attestation can be tested deterministically in seconds, without training.
docs/world-models.md describes world-model families (the trainable extension of
`WorldModel`); examples/distill_custom_teacher.py is a worked example of both plug points.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from distill.envs import EnvSpec, env_spec
from distill.errors import UnknownEnvError
from distill.mppi import MPPIConfig, mppi_plan

__all__ = [
    "ORACLE_MPPI",
    "TEACHER_POLICIES",
    "ActorTeacher",
    "OracleMPPITeacher",
    "Teacher",
    "WorldModel",
    "WorldModelTeacher",
    "has_policy_prior",
]


@runtime_checkable
class Teacher(Protocol):
    """Maps observations to actions in environment units, for a batch of environments.

    `reset(n)` starts n fresh episodes (clearing any warm-start state); `act` is then
    called once per step with the n current observations, in the same order.
    `digest` identifies the teacher for provenance (a hash of weights + settings).
    """

    def reset(self, n: int) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray:
        """obs (n, obs_dim) float32 -> actions (n, act_dim) float32 within the action bounds."""
        ...

    def digest(self) -> str: ...


@runtime_checkable
class WorldModel(Protocol):
    """A latent world model, TD-MPC2 style. Actions are normalised to [-1, 1].

    Shapes: obs (..., obs_dim) -> z (..., latent); a (..., action_dim); `reward` and
    `value` return (...,) scalars. `pi` returns a policy-prior action for each z
    (sampled or deterministic), or None if the model has no policy prior; `value`
    may return zeros if the model has no critic (MPPI then plans over rewards only).
    """

    action_dim: int
    discount: float

    def encode(self, obs: torch.Tensor) -> torch.Tensor: ...

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...

    def value(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...

    def pi(self, z: torch.Tensor) -> torch.Tensor | None: ...

    def digest(self) -> str: ...


# How a world-model teacher chooses actions: its policy prior, or MPPI over the model
# ("auto": the policy prior when the model has one).
TEACHER_POLICIES = ("auto", "actor", "mppi")


class _MPPITeacher:
    """Shared warm-start bookkeeping: plan, act with the mean's first step, shift."""

    def __init__(self, spec: EnvSpec, mppi: MPPIConfig, seed: int, device: str) -> None:
        self.spec, self.mppi, self.device = spec, mppi, torch.device(device)
        self._seed = seed
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        self._mean: torch.Tensor | None = None
        self._low = torch.as_tensor(spec.act_low, device=self.device)
        self._high = torch.as_tensor(spec.act_high, device=self.device)

    def reset(self, n: int) -> None:
        self._mean = None
        self._gen.manual_seed(self._seed)

    def _to_env(self, a: torch.Tensor) -> np.ndarray:
        out = self._low + (a.clamp(-1, 1) + 1) * 0.5 * (self._high - self._low)
        return out.detach().cpu().numpy().astype(np.float32)

    def _plan(self, obs: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._to_env(self._plan(np.asarray(obs, dtype=np.float32))[:, 0])

    def _warm(self, n: int) -> torch.Tensor | None:
        # TD-MPC2 warm start: last plan shifted one step, the new last step repeated.
        if self._mean is None or self._mean.shape[0] != n:
            return None
        return torch.cat([self._mean[:, 1:], self._mean[:, -1:]], dim=1)


# Oracle settings found to match SAC on Pendulum (horizon 15, 128 samples, 3 iterations).
ORACLE_MPPI = MPPIConfig(
    horizon=15, num_samples=128, iterations=3, num_elites=16, num_pi_trajs=0, temperature=0.5
)


class OracleMPPITeacher(_MPPITeacher):
    """MPPI over the exact Pendulum-v1 equations of motion (gymnasium's `step`).

    `variant` takes the same keys as `distill.envs.make_env` (g, m, l), so the oracle
    stays optimal on a varied environment.
    """

    def __init__(
        self,
        env_id: str = "Pendulum-v1",
        variant: Mapping[str, float] | None = None,
        mppi: MPPIConfig = ORACLE_MPPI,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        if env_id != "Pendulum-v1":
            raise UnknownEnvError(
                f"the oracle teacher knows only Pendulum-v1's dynamics, not {env_id!r}; "
                "use the world-model teacher"
            )
        super().__init__(env_spec(env_id), mppi, seed, device)
        v = {"g": 10.0, "m": 1.0, "l": 1.0, **dict(variant or {})}
        self.g, self.m, self.l = float(v["g"]), float(v["m"]), float(v["l"])
        self.dt, self.max_speed, self.max_torque = 0.05, 8.0, 2.0

    def digest(self) -> str:
        desc = {"kind": "oracle-mppi", "g": self.g, "m": self.m, "l": self.l, **asdict(self.mppi)}
        return "sha256:" + hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def _plan(self, obs: np.ndarray) -> torch.Tensor:
        o = torch.as_tensor(obs, device=self.device, dtype=torch.float32)
        th0 = torch.atan2(o[:, 1], o[:, 0])
        thdot0 = o[:, 2]

        def value_fn(actions: torch.Tensor) -> torch.Tensor:
            th = th0[:, None].expand(actions.shape[:2])
            thdot = thdot0[:, None].expand(actions.shape[:2])
            total = torch.zeros_like(th)
            for t in range(actions.shape[2]):
                u = actions[:, :, t, 0] * self.max_torque
                norm = torch.remainder(th + torch.pi, 2 * torch.pi) - torch.pi
                total = total - (norm**2 + 0.1 * thdot**2 + 0.001 * u**2)
                acc = 3 * self.g / (2 * self.l) * torch.sin(th) + 3.0 / (self.m * self.l**2) * u
                thdot = (thdot + acc * self.dt).clamp(-self.max_speed, self.max_speed)
                th = th + thdot * self.dt
            return total

        mean, _ = mppi_plan(
            value_fn,
            len(obs),
            1,
            self.mppi,
            self._gen,
            init_mean=self._warm(len(obs)),
            device=self.device,
        )
        self._mean = mean
        return mean


class WorldModelTeacher(_MPPITeacher):
    """MPPI over any `WorldModel` (TD-MPC2's planning with a terminal Q and policy prior)."""

    def __init__(
        self,
        model: WorldModel,
        spec: EnvSpec,
        mppi: MPPIConfig | None = None,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__(spec, mppi or MPPIConfig(), seed, device)
        if model.action_dim != spec.act_dim:
            raise UnknownEnvError(
                f"world model acts in {model.action_dim} dims but {spec.env_id} has {spec.act_dim}"
            )
        self.model = model

    def digest(self) -> str:
        desc = json.dumps({"kind": "world-model-mppi", **asdict(self.mppi)}, sort_keys=True)
        return "sha256:" + hashlib.sha256((self.model.digest() + desc).encode()).hexdigest()

    def _plan(self, obs: np.ndarray) -> torch.Tensor:
        return plan_with_model(
            self.model,
            torch.as_tensor(obs, device=self.device),
            self.mppi,
            self._gen,
            init_mean=self._warm(len(obs)),
            keep=self,
        )


class ActorTeacher:
    """Acts with a `WorldModel`'s own policy prior: encode, then the prior's mode.

    A model may offer ``pi_mode(z)`` (the deterministic action of its policy prior,
    e.g. tanh of the Gaussian's mean); without it the sampled ``pi(z)`` is used, drawn
    from the model's generator, which `reset` does not re-seed (set it with
    ``model.set_generator``). One call costs an encoder and a policy pass for the
    whole batch.
    """

    def __init__(self, model: WorldModel, spec: EnvSpec, device: str = "cpu") -> None:
        if model.action_dim != spec.act_dim:
            raise UnknownEnvError(
                f"world model acts in {model.action_dim} dims but {spec.env_id} has {spec.act_dim}"
            )
        if not has_policy_prior(model, spec, device):
            raise UnknownEnvError(
                "this world model has no policy prior to act with; use the MPPI teacher"
            )
        self.model, self.spec, self.device = model, spec, torch.device(device)
        self._low = torch.as_tensor(spec.act_low, device=self.device)
        self._high = torch.as_tensor(spec.act_high, device=self.device)

    def reset(self, n: int) -> None:
        return None

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        z = self.model.encode(o)
        mode = getattr(self.model, "pi_mode", None)
        a = mode(z) if mode is not None else self.model.pi(z)
        assert a is not None  # checked in __init__
        out = self._low + (a.clamp(-1, 1) + 1) * 0.5 * (self._high - self._low)
        return out.cpu().numpy().astype(np.float32)

    def digest(self) -> str:
        desc = json.dumps({"kind": "world-model-actor"}, sort_keys=True)
        return "sha256:" + hashlib.sha256((self.model.digest() + desc).encode()).hexdigest()


@torch.no_grad()
def has_policy_prior(model: WorldModel, spec: EnvSpec, device: str = "cpu") -> bool:
    """Whether `model` can act by itself (`ActorTeacher`): a ``pi_mode`` or a ``pi``
    that returns actions."""
    if getattr(model, "pi_mode", None) is not None:
        return True
    return model.pi(model.encode(torch.zeros(1, spec.obs_dim, device=device))) is not None


@torch.no_grad()
def plan_with_model(
    model: WorldModel,
    obs: torch.Tensor,
    cfg: MPPIConfig,
    gen: torch.Generator,
    *,
    init_mean: torch.Tensor | None = None,
    keep: _MPPITeacher | None = None,
    return_std: bool = False,
) -> torch.Tensor:
    """Plan over `model` for a batch of observations; returns the mean plan (B, H, A)."""
    z0 = model.encode(obs)
    b, h = obs.shape[0], cfg.horizon
    gamma = model.discount

    prior = None
    if cfg.num_pi_trajs > 0:
        z = z0[:, None].expand(b, cfg.num_pi_trajs, z0.shape[-1])
        steps = []
        for _ in range(h):
            a = model.pi(z)
            if a is None:
                break
            steps.append(a)
            z = model.next(z, a)
        if len(steps) == h:
            prior = torch.stack(steps, dim=2)

    def value_fn(actions: torch.Tensor) -> torch.Tensor:
        z = z0[:, None].expand(b, actions.shape[1], z0.shape[-1])
        total = torch.zeros(actions.shape[:2], device=z.device)
        disc = 1.0
        for t in range(h):
            a = actions[:, :, t]
            total = total + disc * model.reward(z, a)
            z = model.next(z, a)
            disc *= gamma
        a_last = model.pi(z)
        if a_last is not None:
            total = total + disc * model.value(z, a_last)
        return total

    mean, std = mppi_plan(
        value_fn,
        b,
        model.action_dim,
        cfg,
        gen,
        init_mean=init_mean,
        prior_actions=prior,
        device=obs.device,
    )
    if keep is not None:
        keep._mean = mean
    if return_std:
        return torch.stack([mean, std])
    return mean
