"""World-model families compared on one environment with one budget: each family is
trained online, acts as the teacher (with its own actor, or `--teacher-policy mppi`:
MPPI over the model), and is distilled into an ONNX student through the same
`distill run` pipeline.

Usage::

    .venv/bin/python bench/compare_world_models.py                     # Pendulum-v1, 10,000 steps
    .venv/bin/python bench/compare_world_models.py --steps 600 --quick # smoke check

Prints a table (teacher = the model's actor or planner, student = the distilled
ONNX policy through the runtime's kernel, both on the same shared initial states;
world-model training time; model parameters) and a JSON line, and writes the
learning curves (episode return while training) to a PNG.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _run(family: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    from distill.dagger import DaggerConfig
    from distill.mppi import MPPIConfig
    from distill.pipeline import DistillConfig, run_pipeline
    from distill.train_wm import CPU_TRAIN_MPPI, TrainConfig
    from distill.wm_store import from_pretrained
    from distill.world_model import param_count

    quick = MPPIConfig(horizon=3, num_samples=32, iterations=2, num_elites=4, num_pi_trajs=4)
    mppi = quick if args.quick else CPU_TRAIN_MPPI
    cfg = DistillConfig(
        out_dir=out / family,
        env_id=args.env,
        teacher="world-model",
        seed=args.seed,
        eval_episodes=args.eval_episodes,
        dagger=DaggerConfig(rounds=2, envs_per_round=2, epochs=2) if args.quick else DaggerConfig(),
        train=TrainConfig(family=family, total_steps=args.steps, seed_steps=args.seed_steps,
                          num_envs=args.num_envs, updates_per_step=args.utd, mppi=mppi),
        teacher_policy=args.teacher_policy,
        teacher_mppi=mppi,
    )  # fmt: skip
    result = run_pipeline(cfg)
    s = result.summary
    model, _ = from_pretrained(out / family / "world_model")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{family}: parameters can be counted for torch modules only")
    return {
        "family": family,
        "teacher_policy": s["teacher_policy"],
        "teacher_return": s["teacher_return"],
        "student_return": s["student_return"],
        "random_return": s["random_return"],
        "train_seconds": s["seconds"]["teacher"],
        "total_seconds": s["seconds"]["total"],
        "parameters": param_count(model),
        "curve": result.curves["world_model"],
    }


def _plot(rows: list[dict[str, Any]], path: Path, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.atomicio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        ax.plot(r["curve"]["step"], r["curve"]["episode_return"], marker=".", label=r["family"])
    ax.set(title=f"world-model training on {env_id}", xlabel="env steps", ylabel="episode return")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--families", default="tdmpc2,dreamerv3")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seed-steps", type=int, default=1_000)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--utd", type=float, default=1.0)
    p.add_argument("--teacher-policy", choices=["auto", "actor", "mppi"], default="auto",
                   help="the teacher: each model's own actor, or MPPI over it")  # fmt: skip
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny planner and DAgger (smoke check)")
    p.add_argument("--out", type=Path, default=Path("bench-out/world-models"))
    args = p.parse_args(argv)
    import logging

    import torch

    # The ONNX exporter warns about every torchvision operator it cannot register.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    rows = [_run(f, args, args.out) for f in args.families.split(",")]
    print(
        f"{'family':<10} {'teacher':>9} {'student':>9} {'random':>9} {'train s':>8} "
        f"{'params':>8}  teacher acts with"
    )
    for r in rows:
        cells = (r["teacher_return"], r["student_return"], r["random_return"])
        returns = " ".join(f"{c:>9.1f}" for c in cells)
        print(
            f"{r['family']:<10} {returns} {r['train_seconds']:>8.1f} {r['parameters']:>8}  "
            f"{r['teacher_policy']}"
        )
    _plot(rows, args.out / "learning_curves.png", args.env)
    line = {"env_id": args.env, "steps": args.steps, "seed": args.seed,
            "families": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}  # fmt: skip
    print(json.dumps(line))
    return rows


if __name__ == "__main__":
    main()
