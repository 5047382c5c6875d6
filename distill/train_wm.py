"""Online world-model training: the planner acts, episodes go to the buffer, the model updates.

Single process (CPU by default, CUDA when present)::

    python -m distill.train_wm --env Pendulum-v1 --steps 10000 --out world_model/

`--out` names a saved-model directory (`distill.wm_store`), or, for the tdmpc2
family, a single ``.pt`` checkpoint file.

Data-parallel over processes with torchrun (gloo on CPU, NCCL on GPU); each rank
collects its own episodes (seed + rank), gradients are averaged across ranks
before every optimiser step, so all ranks hold identical weights; rank 0 writes
the checkpoint::

    torchrun --nproc-per-node 2 -m distill.train_wm --env Pendulum-v1 --steps 10000 --out wm.pt

The averaging is an explicit all-reduce rather than a `DistributedDataParallel`
wrapper because TD-MPC2's update calls sub-networks directly and has two
optimisers (model and policy prior), which DDP's forward hooks do not see.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from distill.envs import EnvBatch, EnvSpec, discount_for, env_spec
from distill.errors import CheckpointError, UnknownFamilyError
from distill.mppi import MPPIConfig
from distill.replay import ReplayBuffer, Trajectory
from distill.seeds import draw_training
from distill.teachers import plan_with_model
from distill.wm_interface import TrainableWorldModel
from distill.wm_registry import load_family
from distill.wm_store import check_writable, save_pretrained
from distill.world_model import PRESETS, TDMPC2Model, pick_device, save_checkpoint

__all__ = [
    "CPU_TRAIN_MPPI",
    "TrainConfig",
    "TrainResult",
    "estimate_training_seconds",
    "main",
    "train_world_model",
]

# Planner while training on CPU (a CPU preset: 128-256 samples, 3-4 iterations).
CPU_TRAIN_MPPI = MPPIConfig(
    horizon=3, num_samples=256, iterations=4, num_elites=32, num_pi_trajs=12, temperature=0.5
)


@dataclass(frozen=True)
class TrainConfig:
    family: str = "tdmpc2"
    """A world-model family of `distill.wm_registry` (built-in or from an entry point)."""
    preset: str = "cpu-small"
    """A size the family knows (for tdmpc2: a key of distill.world_model.PRESETS)."""
    total_steps: int = 10_000
    """Environment steps collected by this process."""
    seed_steps: int = 1_000
    """Steps of uniform random actions before the planner takes over."""
    num_envs: int = 4
    """Environments stepped in lock-step (the planner is batched over them)."""
    updates_per_step: float = 1.0
    """Gradient updates per environment step collected (update-to-data ratio)."""
    mppi: MPPIConfig = CPU_TRAIN_MPPI
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.family == "tdmpc2" and self.preset not in PRESETS:
            raise ValueError(f"unknown world-model preset {self.preset!r}: {sorted(PRESETS)}")
        if self.total_steps < 1 or self.num_envs < 1 or self.updates_per_step < 0:
            raise ValueError(f"invalid training budget: {self}")


@dataclass
class TrainResult:
    model: TrainableWorldModel
    buffer: ReplayBuffer
    curves: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    env_seeds: list[int] = field(default_factory=list)
    """Every environment seed this rank reset from (recorded in the bundle's provenance)."""


def estimate_training_seconds(spec: EnvSpec, cfg: TrainConfig, probes: int = 8) -> float:
    """Wall seconds `train_world_model(spec, cfg, ...)` would take on this machine now.

    Measured, not assumed: times `probes` gradient steps and planning calls of a fresh
    model of the configured family and size (about a second), then scales by the
    budget — (steps - seed_steps) · utd updates and (steps - seed_steps) / num_envs
    planning calls. The machine's current load is in the measurement.
    """
    device = pick_device(cfg.device)
    family = load_family(cfg.family)
    config = {**family.default_config(cfg.preset), "discount": discount_for(spec.max_episode_steps)}
    model = family.build(spec.obs_dim, spec.act_dim, config).to(device)
    batch_size, horizon = int(config.get("batch_size", 256)), int(config.get("horizon", 3))
    gen = torch.Generator(device=device).manual_seed(0)
    model.set_generator(gen)
    obs = torch.zeros(horizon + 1, batch_size, spec.obs_dim, device=device)
    act = torch.zeros(horizon, batch_size, spec.act_dim, device=device)
    rew = torch.zeros(horizon, batch_size, device=device)
    model.train_step(obs, act, rew)  # first step builds the optimisers
    start = time.perf_counter()
    for _ in range(probes):
        model.train_step(obs, act, rew)
    per_update = (time.perf_counter() - start) / probes
    model.eval()
    plan_obs = torch.zeros(cfg.num_envs, spec.obs_dim, device=device)
    start = time.perf_counter()
    for _ in range(probes):
        plan_with_model(model, plan_obs, cfg.mppi, gen)
    per_plan = (time.perf_counter() - start) / probes
    planned = max(0, cfg.total_steps - cfg.seed_steps)
    return planned * cfg.updates_per_step * per_update + planned / cfg.num_envs * per_plan


def _average_grads(world: int) -> Callable[[list[nn.Parameter]], None]:
    def reduce(params: list[nn.Parameter]) -> None:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(world)

    return reduce


def train_world_model(
    spec: EnvSpec,
    cfg: TrainConfig,
    seed: int,
    on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train online; inside a torchrun process group, gradients are averaged across ranks."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 7919 * rank)
    family = load_family(cfg.family)
    config = {**family.default_config(cfg.preset), "discount": discount_for(spec.max_episode_steps)}
    model: TrainableWorldModel = family.build(spec.obs_dim, spec.act_dim, config).to(device)
    batch_size, horizon = int(config.get("batch_size", 256)), int(config.get("horizon", 3))
    gen = torch.Generator(device=device).manual_seed(seed + 104729 * rank)
    model.set_generator(gen)
    if distributed:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    reduce = _average_grads(world) if distributed else None
    buffer = ReplayBuffer(spec.env_id, spec.obs_dim, spec.act_dim)
    mid = (spec.act_high + spec.act_low) / 2
    half = (spec.act_high - spec.act_low) / 2
    batch = EnvBatch(spec.env_id, cfg.num_envs)
    curves: dict[str, list[float]] = {"step": [], "episode_return": [], "total_loss": []}
    steps, started = 0, time.perf_counter()
    env_seeds: list[int] = []
    try:
        while steps < cfg.total_steps:
            seeds = draw_training(rng, cfg.num_envs)
            env_seeds.extend(seeds)
            trajs = _collect(model, batch, seeds, cfg, steps < cfg.seed_steps, gen, mid, half, rng)
            new = sum(len(t) for t in trajs)
            for t in trajs:
                buffer.add(t)
            steps += new
            stats: dict[str, float] = {}
            if steps >= cfg.seed_steps:
                for _ in range(int(new * cfg.updates_per_step)):
                    obs, act, rew = buffer.sample_sequences(batch_size, horizon, rng)
                    stats = model.train_step(
                        torch.as_tensor(obs, device=device),
                        torch.as_tensor((act - mid) / half, device=device),
                        torch.as_tensor(rew, device=device),
                        reduce,
                    )
            ret = float(np.mean([t.rewards.sum() for t in trajs]))
            curves["step"].append(float(steps))
            curves["episode_return"].append(ret)
            curves["total_loss"].append(stats.get("total_loss", float("nan")))
            if on_progress is not None:
                on_progress(min(steps, cfg.total_steps), cfg.total_steps, {"return": ret, **stats})
    finally:
        batch.close()
    return TrainResult(
        model.eval(), buffer, curves, steps, time.perf_counter() - started, env_seeds
    )


@torch.no_grad()
def _collect(
    model: TrainableWorldModel,
    batch: EnvBatch,
    seeds: list[int],
    cfg: TrainConfig,
    random_actions: bool,
    gen: torch.Generator,
    mid: np.ndarray,
    half: np.ndarray,
    rng: np.random.Generator,
) -> list[Trajectory]:
    """One episode per environment: random actions, or MPPI with exploration noise."""
    n, device = len(seeds), model.device
    obs = batch.reset(seeds)
    logs: dict[str, list[np.ndarray]] = {"obs": [obs], "act": [], "rew": [], "alive": []}
    mean = None
    model.eval()
    while batch.active.any():
        alive = batch.active.copy()
        if random_actions:
            a = rng.uniform(-1, 1, size=(n, len(mid))).astype(np.float32)
        else:
            init = None if mean is None else torch.cat([mean[:, 1:], mean[:, -1:]], dim=1)
            mean, std = plan_with_model(
                model,
                torch.as_tensor(obs, device=device),
                cfg.mppi,
                gen,
                init_mean=init,
                return_std=True,
            )
            # Exploration as in TD-MPC2 training: perturb the first action by the plan's std.
            noise = torch.randn(mean[:, 0].shape, generator=gen, device=device)
            a = (mean[:, 0] + std[:, 0] * noise).clamp(-1, 1).cpu().numpy()
        obs, rew, _ = batch.step(mid + half * a)
        logs["obs"].append(obs)
        logs["act"].append(mid + half * a)
        logs["rew"].append(rew)
        logs["alive"].append(alive)
    alive_arr = np.array(logs["alive"])
    out = []
    for i in range(n):
        t = int(alive_arr[:, i].sum())
        out.append(
            Trajectory(
                obs=np.array([o[i] for o in logs["obs"][: t + 1]], dtype=np.float32),
                actions=np.array([x[i] for x in logs["act"][:t]], dtype=np.float32),
                rewards=np.array([r[i] for r in logs["rew"][:t]], dtype=np.float32),
                seed=seeds[i],
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point for `python -m distill.train_wm` and `torchrun -m distill.train_wm`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--steps", type=int, default=TrainConfig.total_steps)
    p.add_argument("--seed-steps", type=int, default=TrainConfig.seed_steps)
    p.add_argument("--num-envs", type=int, default=TrainConfig.num_envs)
    p.add_argument("--utd", type=float, default=TrainConfig.updates_per_step)
    p.add_argument("--family", default=TrainConfig.family)
    p.add_argument("--preset", default=TrainConfig.preset, help=f"tdmpc2: {sorted(PRESETS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.out.suffix == ".pt" and args.family != "tdmpc2":
        p.error(f"--out {args.out}: a .pt file holds tdmpc2 models only; name a directory")
    try:
        load_family(args.family)
    except UnknownFamilyError as exc:
        p.error(f"--family: {exc}")
    if args.out.suffix != ".pt":
        try:
            check_writable(args.out)
        except CheckpointError as exc:
            p.error(f"--out: {exc}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        device = pick_device(args.device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        spec = env_spec(args.env)
        cfg = TrainConfig(
            family=args.family,
            preset=args.preset,
            total_steps=args.steps,
            seed_steps=args.seed_steps,
            num_envs=args.num_envs,
            updates_per_step=args.utd,
            device=args.device,
        )
        result = train_world_model(spec, cfg, args.seed)
        rank = dist.get_rank() if world > 1 else 0
        seeds: list[int] = list(result.env_seeds)
        if world > 1:  # every rank reset its own environments: record them all
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, seeds)
            seeds = [int(s) for part in gathered for s in part]
        extra: dict[str, Any] = {
            "train": asdict(cfg),
            "seed": args.seed,
            "world_size": world,
            "env_seeds": seeds,
        }
        print(f"rank {rank} digest {result.model.digest()} steps {result.steps}", flush=True)
        if rank == 0 and isinstance(result.model, TDMPC2Model) and args.out.suffix == ".pt":
            save_checkpoint(result.model, args.out, spec.env_id, extra)
        elif rank == 0:
            save_pretrained(result.model, args.out, spec.env_id, extra)
        if world > 1:
            # Every rank is done (rank 0 has saved) before any tears gloo down: destroying
            # the group while a peer is still in it aborted that peer at exit.
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
