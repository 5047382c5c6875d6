"""Pendulum distillation quality and speed (the acceptance figures).

    .venv/bin/python bench/distill_pendulum.py                      # oracle + world model
    .venv/bin/python bench/distill_pendulum.py --skip-world-model   # oracle only (~2 min)
    .venv/bin/python bench/distill_pendulum.py --wm-checkpoint out/world_model  # reuse a model

Measures, in one process on this machine:
1. the oracle pipeline end to end (teacher, student via onnxruntime, random, over 100
   shared initial states; gap as a fraction of the teacher − random range; wall time);
2. the learned world-model pipeline (online TD-MPC2 training + distillation);
3. per-step latency of the student (onnxruntime, batch 1, `PolicySession`) against
   the world-model teacher (MPPI 512 samples × horizon 3 × 6 iterations).
Prints a table, the ratios, and one JSON line. Numbers on a shared machine are noisy:
compare the ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.envs import env_spec
from distill.evaluate import OnnxPolicy
from distill.mppi import MPPIConfig
from distill.pipeline import DistillConfig, run_pipeline
from distill.teachers import WorldModelTeacher
from distill.train_wm import TrainConfig
from distill.wm_store import load_world_model
from distill.world_model import PRESETS, TDMPC2Model


def _pipeline(out: Path, **kw: object) -> tuple[dict, float]:
    start = time.perf_counter()
    result = run_pipeline(DistillConfig(out_dir=out, **kw))  # type: ignore[arg-type]
    return result.summary, time.perf_counter() - start


def _latency(fn, n: int) -> float:
    for _ in range(min(20, n)):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-world-model", action="store_true")
    p.add_argument("--wm-checkpoint", type=Path)
    p.add_argument("--wm-steps", type=int, default=TrainConfig.total_steps)
    p.add_argument("--wm-utd", type=float, default=TrainConfig.updates_per_step)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    spec = env_spec("Pendulum-v1")
    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    rows: list[tuple[str, str]] = []
    out: dict[str, object] = {"bench": "distill_pendulum", "cpus": os.cpu_count(),
                              "loadavg_start": os.getloadavg()[0]}  # fmt: skip

    oracle, oracle_s = _pipeline(work / "oracle", seed=args.seed)
    out["oracle"] = {**{k: oracle[k] for k in ("teacher_return", "student_return",
                     "random_return", "gap_fraction_of_range")}, "seconds": oracle_s}  # fmt: skip
    rows += [
        ("oracle: teacher / student / random", f"{oracle['teacher_return']:.1f} / "
         f"{oracle['student_return']:.1f} / {oracle['random_return']:.1f}"),
        ("oracle: gap / (teacher - random)", f"{100 * oracle['gap_fraction_of_range']:.2f} %"),
        ("oracle: pipeline wall time", f"{oracle_s:.1f} s (target <= 120 s)"),
    ]  # fmt: skip

    model: Any
    if not args.skip_world_model:
        kw: dict[str, object] = {"teacher": "world-model", "seed": args.seed}
        if args.wm_checkpoint:
            kw["checkpoint"] = args.wm_checkpoint
        else:
            kw["train"] = TrainConfig(total_steps=args.wm_steps, updates_per_step=args.wm_utd)
        wm, wm_s = _pipeline(work / "world-model", **kw)
        out["world_model"] = {**{k: wm[k] for k in ("teacher_return", "student_return",
                              "random_return", "gap_fraction_of_range")}, "seconds": wm_s,
                              "seconds_by_stage": wm["seconds"],
                              "checkpoint_reused": bool(args.wm_checkpoint)}  # fmt: skip
        rows += [
            ("world model: teacher / student / random", f"{wm['teacher_return']:.1f} / "
             f"{wm['student_return']:.1f} / {wm['random_return']:.1f}"),
            ("world model: gap / (teacher - random)",
             f"{100 * wm['gap_fraction_of_range']:.2f} %"),
            ("world model: wall time" + (" (training reused)" if args.wm_checkpoint else ""),
             f"{wm_s:.1f} s (target <= 900 s)"),
        ]  # fmt: skip
        model = load_world_model(
            args.wm_checkpoint or work / "world-model" / "world_model", obs_dim=3, action_dim=1
        )[0]
    else:
        model = TDMPC2Model(3, 1, PRESETS["cpu-small"])  # latency does not depend on weights
    model.set_generator(torch.Generator().manual_seed(0))

    teacher = WorldModelTeacher(model, spec, MPPIConfig(), seed=0)  # 512 x 3 x 6, 24 pi trajs
    obs = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    teacher.reset(1)
    t_teacher = _latency(lambda: teacher.act(obs), 50)
    student = OnnxPolicy.unpackaged((work / "oracle" / "policy.onnx").read_bytes(), spec)
    t_student = _latency(lambda: student.act(obs), 2000)
    out["latency"] = {"teacher_ms": t_teacher * 1e3, "student_us": t_student * 1e6,
                      "ratio": t_teacher / t_student}  # fmt: skip
    rows += [
        ("teacher step (MPPI 512x3x6, world model)", f"{t_teacher * 1e3:.2f} ms"),
        ("student step (onnxruntime, batch 1)", f"{t_student * 1e6:.1f} us"),
        ("ratio teacher / student", f"{t_teacher / t_student:.0f}x"),
    ]
    out["loadavg_end"] = os.getloadavg()[0]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(load average {out['loadavg_start']:.1f} -> {out['loadavg_end']:.1f} on "
          f"{out['cpus']} CPUs; the machine is shared)")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
