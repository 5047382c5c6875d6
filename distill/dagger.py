"""DAgger (Ross, Gordon & Bagnell 2011, Alg. 3.1) with a batched teacher.

Round i runs the mixture π_i = β_i π* + (1 − β_i) π̂_i with β_i = 0.5^i (round 0
is the teacher alone, i.e. behaviour cloning data). At every visited state of a
batch of environments the teacher is queried once for the whole batch; its action
is the label, and with probability β_i it is also the action executed. The
aggregated data set trains the student by MSE to the teacher's (MPPI mean) action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from distill.envs import EnvBatch, EnvSpec
from distill.replay import ReplayBuffer, Trajectory
from distill.seeds import draw_training
from distill.student import Student, StudentConfig, TorchPolicy
from distill.teachers import Teacher

__all__ = ["DaggerConfig", "DaggerResult", "run_dagger"]


@dataclass(frozen=True)
class DaggerConfig:
    rounds: int = 5
    """Data-collection rounds (β_i = 0.5^i for i = 0 .. rounds-1)."""
    envs_per_round: int = 16
    """Episodes collected in lock-step per round (one batched teacher call per step)."""
    epochs: int = 30
    """Passes over the aggregated data after each round."""
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if min(self.rounds, self.envs_per_round, self.epochs, self.batch_size) < 1:
            raise ValueError(f"DAgger sizes must be >= 1: {self}")


@dataclass
class DaggerResult:
    student: Student
    data: ReplayBuffer
    """Every visited state with the action executed and the teacher's label."""
    curves: dict[str, list[float]] = field(default_factory=dict)
    """Per round: beta, mean return of the executed mixture, final training loss."""
    env_seeds: list[int] = field(default_factory=list)
    """Every environment seed DAgger reset from (recorded in provenance so evaluation
    campaigns can prove their seeds are disjoint from training's)."""


def run_dagger(
    spec: EnvSpec,
    teacher: Teacher,
    cfg: DaggerConfig,
    student_cfg: StudentConfig,
    seed: int,
    variant: Mapping[str, float] | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> DaggerResult:
    """Distil `teacher` into a fresh student; every random choice derives from `seed`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    student = Student(spec.obs_dim, spec.act_low, spec.act_high, student_cfg)
    data = ReplayBuffer(spec.env_id, spec.obs_dim, spec.act_dim)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    curves: dict[str, list[float]] = {"beta": [], "mixture_return": [], "loss": []}
    batch = EnvBatch(spec.env_id, cfg.envs_per_round, variant)
    env_seeds: list[int] = []
    try:
        for i in range(cfg.rounds):
            beta = 0.5**i
            seeds = draw_training(rng, cfg.envs_per_round)
            env_seeds.extend(seeds)
            mixture_return = _collect(batch, teacher, student, beta, seeds, rng, data)
            loss = _fit(
                student,
                opt,
                data,
                cfg,
                rng,
                refit_normaliser=(i == 0),
                on_epoch=_epoch_of_round(on_epoch, i),
            )
            stats = {"beta": beta, "mixture_return": mixture_return, "loss": loss}
            for k, v in stats.items():
                curves[k].append(float(v))
            if on_round is not None:
                on_round(i, stats)
    finally:
        batch.close()
    return DaggerResult(student=student.eval(), data=data, curves=curves, env_seeds=env_seeds)


def _collect(
    batch: EnvBatch,
    teacher: Teacher,
    student: Student,
    beta: float,
    seeds: list[int],
    rng: np.random.Generator,
    data: ReplayBuffer,
) -> float:
    n = len(seeds)
    obs = batch.reset(seeds)
    teacher.reset(n)
    policy = TorchPolicy(student)
    obs_log, act_log, lab_log, rew_log, alive_log = [obs], [], [], [], []
    while batch.active.any():
        alive = batch.active.copy()
        labels = np.asarray(teacher.act(obs), dtype=np.float32)
        use_teacher = rng.random(n) < beta
        if beta >= 1.0:
            executed = labels
        else:
            executed = np.where(use_teacher[:, None], labels, policy.act(obs))
        obs, rewards, _ = batch.step(executed)
        obs_log.append(obs)
        act_log.append(executed)
        lab_log.append(labels)
        rew_log.append(rewards)
        alive_log.append(alive)
    alive_arr = np.array(alive_log)
    total = 0.0
    for i in range(n):
        t = int(alive_arr[:, i].sum())
        traj = Trajectory(
            obs=np.array([o[i] for o in obs_log[: t + 1]], dtype=np.float32),
            actions=np.array([a[i] for a in act_log[:t]], dtype=np.float32),
            rewards=np.array([r[i] for r in rew_log[:t]], dtype=np.float32),
            labels=np.array([a[i] for a in lab_log[:t]], dtype=np.float32),
            seed=seeds[i],
        )
        data.add(traj)
        total += float(traj.rewards.sum())
    student.train()
    return total / n


def _epoch_of_round(
    on_epoch: Callable[[int, int], None] | None, round_index: int
) -> Callable[[int], None] | None:
    """`on_epoch(round, epoch)` as the per-epoch callback of one round's fit."""
    if on_epoch is None:
        return None
    return lambda epoch: on_epoch(round_index, epoch)


def _fit(
    student: Student,
    opt: torch.optim.Optimizer,
    data: ReplayBuffer,
    cfg: DaggerConfig,
    rng: np.random.Generator,
    refit_normaliser: bool,
    on_epoch: Callable[[int], None] | None = None,
) -> float:
    states, _ = data.transitions()
    labels = data.arrays()["labels"]
    if refit_normaliser:
        # Fixed after round 0 so later rounds refine, rather than re-map, the inputs.
        student.set_normaliser(states)
    x = torch.as_tensor(states)
    y = torch.as_tensor(labels)
    student.train()
    loss_value = 0.0
    for epoch in range(cfg.epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        order = torch.as_tensor(rng.permutation(len(x)))
        for start in range(0, len(x), cfg.batch_size):
            sel = order[start : start + cfg.batch_size]
            loss = torch.nn.functional.mse_loss(student(x[sel]), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
    student.eval()
    return loss_value
