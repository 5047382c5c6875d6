"""A MuJoCo task (Reacher-v5 by default) through the learned world-model pipeline.

    .venv/bin/python bench/distill_mujoco.py                       # CPU budget below
    .venv/bin/python bench/distill_mujoco.py --env HalfCheetah-v5 --steps 50000 --device cuda

There is no oracle for MuJoCo tasks: the teacher is MPPI over a TD-MPC2 model trained
online for `--steps` environment steps, then distilled by DAgger and exported. The
baseline in the same process is the uniform random policy on the same shared initial
states. Prints a table and one JSON line; the CPU budget is stated in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from distill.dagger import DaggerConfig
from distill.mppi import MPPIConfig
from distill.pipeline import DistillConfig, run_pipeline
from distill.train_wm import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="Reacher-v5")
    p.add_argument("--steps", type=int, default=6_000)
    p.add_argument("--utd", type=float, default=0.25)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-mujoco-"))
    planner = MPPIConfig(num_samples=256, iterations=4, num_elites=32, num_pi_trajs=12)
    cfg = DistillConfig(
        out_dir=work,
        env_id=args.env,
        teacher="world-model",
        seed=args.seed,
        eval_episodes=args.episodes,
        train=TrainConfig(total_steps=args.steps, updates_per_step=args.utd, device=args.device),
        teacher_mppi=planner,
        dagger=DaggerConfig(rounds=5, envs_per_round=16, epochs=30),
    )
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    s = run_pipeline(cfg).summary
    wall = time.perf_counter() - start
    rows = [
        ("env", args.env),
        ("budget", f"{args.steps} env steps, UTD {args.utd}, {os.cpu_count()} CPUs, "
                   f"device {args.device}"),
        ("teacher return", f"{s['teacher_return']:.2f}"),
        ("student return (onnxruntime)", f"{s['student_return']:.2f}"),
        ("random return", f"{s['random_return']:.2f}"),
        ("teacher / random ratio of |return|",
         f"{abs(s['teacher_return']) / max(abs(s['random_return']), 1e-9):.3f}"),
        ("gap / (teacher - random)", f"{100 * s['gap_fraction_of_range']:.2f} %"),
        ("numeric parity", f"{s['numeric_parity']['passed']} (max abs "
                           f"{s['numeric_parity']['max_abs']:.2e})"),
        ("wall time", f"{wall:.0f} s {json.dumps({k: round(v) for k, v in s['seconds'].items()})}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; the machine is shared)")
    print(json.dumps({"bench": "distill_mujoco", "env": args.env, "steps": args.steps,
                      "utd": args.utd, "wall_s": wall, **{k: s[k] for k in (
                          "teacher_return", "student_return", "random_return",
                          "gap_fraction_of_range")}}))  # fmt: skip


if __name__ == "__main__":
    main()
