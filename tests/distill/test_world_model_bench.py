"""`bench/distill_world_model.py`: the learned-teacher pipeline end to end with the
campaign against its own teacher. Small budget in CI (tests/budgets.py); the full
budget checks the acceptance figures (CPU seconds, so a busy machine does not decide)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.distill_world_model import main
from tests.budgets import slow_budget


@pytest.mark.slow
def test_the_pipeline_reports_every_stage_and_attests_against_its_own_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = slow_budget(full=1, ci=0) == 1
    small = ["--wm-steps", "1200", "--episodes", "10", "--calibration", "10", "--workers", "1",
             "--rounds", "2", "--baseline-episodes", "2"]  # fmt: skip
    argv = [] if full else small
    out = main([*argv, "--keep", str(tmp_path)])
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == out
    stages = {"teacher", "teacher-eval", "dagger", "export", "student-eval", "package", "campaign"}
    assert set(out["stages"]) == stages
    for st in out["stages"].values():
        assert st["wall_s"] >= 0 and st["cpu_s"] >= 0 and st["load_start"] >= 0
    assert out["reference_is_own_teacher"] is True and out["teacher_policy"] == "actor"
    assert out["verdict"] in ("attested", "not_attested", "underpowered")
    assert "parity campaign vs own teacher" in printed and "total" in printed
    base = out["baseline"]  # MPPI over the same model costs far more per episode
    assert base["episodes"] == (10 if full else 2) and base["ratio"] > 10
    if full:  # the acceptance figures of the default budget
        assert out["teacher_return"] >= -170.0
        assert out["verdict"] == "attested"
        assert out["total_cpu_seconds"] <= 900.0
