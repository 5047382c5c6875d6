"""A MuJoCo task (Reacher-v5 by default) through the learned world-model pipeline.

    .venv/bin/python bench/distill_mujoco.py                       # CPU budget below
    .venv/bin/python bench/distill_mujoco.py --env HalfCheetah-v5 --steps 50000 --device cuda

There is no oracle for MuJoCo tasks: the teacher is a TD-MPC2 model trained online for
`--steps` environment steps, acting with its own actor (or `--teacher-policy mppi`:
MPPI over it), then distilled by DAgger and exported. The baseline in the same process
is the uniform random policy on the same shared initial states; beside ours the table
prints a published reference return (TD3, Fujimoto et al. 2018, Table 1: the maximum
average return within one million steps on the v1 tasks of its time, so a far larger
budget and an older version of the task). Prints a table and one JSON line; the CPU
budget is stated in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Published returns (TD3 paper, Table 1; max average return over 1M steps, ± std over seeds).
REFERENCE = {
    "Reacher-v5": (-3.6, 0.6, "TD3, Fujimoto et al. 2018, Reacher-v1, 1M steps"),
    "HalfCheetah-v5": (9637.0, 859.1, "TD3, Fujimoto et al. 2018, HalfCheetah-v1, 1M steps"),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="Reacher-v5")
    p.add_argument("--steps", type=int, default=6_000)
    p.add_argument("--utd", type=float, default=0.25)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-policy", choices=["auto", "actor", "mppi"], default="auto")
    p.add_argument("--rounds", type=int, default=5, help="DAgger rounds")
    p.add_argument("--out", type=Path, help="work directory (default: a temp dir)")
    args = p.parse_args(argv)
    import torch

    from distill.dagger import DaggerConfig
    from distill.mppi import MPPIConfig
    from distill.pipeline import DistillConfig, run_pipeline
    from distill.train_wm import TrainConfig

    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-mujoco-"))
    planner = MPPIConfig(num_samples=256, iterations=4, num_elites=32, num_pi_trajs=12)
    cfg = DistillConfig(
        out_dir=work,
        env_id=args.env,
        teacher="world-model",
        seed=args.seed,
        eval_episodes=args.episodes,
        train=TrainConfig(total_steps=args.steps, updates_per_step=args.utd, device=args.device),
        teacher_policy=args.teacher_policy,
        teacher_mppi=planner,
        dagger=DaggerConfig(rounds=args.rounds, envs_per_round=16, epochs=30),
    )
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    cpu0 = time.process_time()
    s = run_pipeline(cfg).summary
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    ref = REFERENCE.get(args.env)
    rows = [
        ("env", args.env),
        ("budget", f"{args.steps} env steps, UTD {args.utd}, {os.cpu_count()} CPUs, "
                   f"device {args.device}"),
        ("teacher return", f"{s['teacher_return']:.2f} (acts with its {s['teacher_policy']})"),
        ("student return (onnxruntime)", f"{s['student_return']:.2f}"),
        ("random return", f"{s['random_return']:.2f}"),
        ("published reference", f"{ref[0]:.2f} ± {ref[1]:.2f} ({ref[2]})" if ref else "none"),
        ("teacher / random ratio of |return|",
         f"{abs(s['teacher_return']) / max(abs(s['random_return']), 1e-9):.3f}"),
        ("gap / (teacher - random)", f"{100 * s['gap_fraction_of_range']:.2f} %"),
        ("numeric parity", f"{s['numeric_parity']['passed']} (max abs "
                           f"{s['numeric_parity']['max_abs']:.2e})"),
        ("wall time", f"{wall:.0f} s {json.dumps({k: round(v) for k, v in s['seconds'].items()})}"),
        ("CPU time (this process)", f"{cpu:.0f} s"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; the machine is shared)")
    line = {"bench": "distill_mujoco", "env": args.env, "steps": args.steps, "utd": args.utd,
            "wall_s": wall, "cpu_s": cpu, "teacher_policy": s["teacher_policy"],
            "reference_return": ref[0] if ref else None,
            "reference": ref[2] if ref else None,
            "numeric_parity": s["numeric_parity"]["passed"],
            **{k: s[k] for k in ("teacher_return", "student_return", "random_return",
                                 "gap_fraction_of_range")}}  # fmt: skip
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
