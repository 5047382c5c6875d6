"""A MuJoCo task through the learned world-model pipeline, with a published reference
beside our returns (`bench/distill_mujoco.py`). Small budget in CI (tests/budgets.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.distill_mujoco import REFERENCE, main
from tests.budgets import slow_budget


@pytest.mark.slow
def test_reacher_trains_distils_and_prints_the_published_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = slow_budget(full=6_000, ci=600)
    line = main(["--env", "Reacher-v5", "--steps", str(steps), "--utd", "0.25",
                 "--episodes", str(slow_budget(full=30, ci=4)),
                 "--rounds", str(slow_budget(full=5, ci=2)), "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == line
    assert line["reference_return"] == REFERENCE["Reacher-v5"][0]
    assert "published reference" in out and "TD3, Fujimoto et al. 2018" in out
    assert line["numeric_parity"] is True and line["teacher_policy"] == "actor"
    for key in ("teacher_return", "student_return", "random_return"):
        assert math.isfinite(line[key]) and line[key] <= 0  # Reacher's rewards are costs
    assert (tmp_path / "reacher-v5-0.1.0" / "policy.onnx").is_file()
