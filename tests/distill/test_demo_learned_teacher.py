"""`edgeflux demo --teacher world-model`: it says what the learned teacher costs on this
machine before any stage starts, and later versions are distilled from the first
version's world model (one training per demo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from distill.wm_store import save_pretrained
from distill.world_model import TDMPC2Model, WorldModelConfig
from edgeflux._demo_config import DemoOptions
from edgeflux._demo_stages import Demo
from edgeflux._processes import ProcessGroup
from runtime.bundle import generate_signing_key

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_states_the_learned_teachers_cost_before_it_starts(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflux.cli", "demo", "--dir", str(workdir), "--exit",
         "--teacher", "world-model"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("learned teacher:"):
                break
        plan = next((x for x in lines if x.startswith("learned teacher:")), None)
        assert plan is not None, "".join(lines)
        # Said before the first stage, with a measured time and the budget it is held to.
        assert not any("prepare" in x for x in lines[: lines.index(plan)]), lines
        assert "world model trained online for 10,000 steps" in plan
        assert "min on this machine now (load" in plan and "-min budget" in plan
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    leftover = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout


def test_a_later_version_is_distilled_from_the_first_versions_world_model(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    small = WorldModelConfig(latent_dim=16, mlp_dim=32, enc_dim=32, activation="silu")
    model = TDMPC2Model(3, 1, small)
    digest = save_pretrained(model, tmp_path / "v1-run" / "world_model", "Pendulum-v1")
    opts = DemoOptions(tmp_path / "demo", quick=True, teacher="world-model")
    demo = Demo(opts, ProcessGroup(tmp_path / "logs"), lambda _msg: None)
    (demo.home / "keys").mkdir(parents=True)
    generate_signing_key(demo.home / "keys" / "model-signing.key", tmp_path / "sign.pub")
    demo.teacher_model = tmp_path / "v1-run" / "world_model"  # what distilling v1.0.0 left
    with demo.procs:
        detail = demo.distill("1.1.0", 2, seed=1)
    summary = json.loads((demo.run_dir("1.1.0", 1) / "summary.json").read_text())
    assert summary["world_model_digest"] == digest and summary["teacher_policy"] == "actor"
    assert "checkpoint" in summary and not (demo.run_dir("1.1.0", 1) / "world_model").exists()
    assert demo.summary.bundles["1.1.0"]["path"].endswith("pendulum-1.1.0")
    assert detail.startswith("pendulum-1.1.0: teacher ")
    assert demo.teacher_model == tmp_path / "v1-run" / "world_model"
