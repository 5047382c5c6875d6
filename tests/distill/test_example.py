from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_custom_teacher_and_world_model_example_distils_both() -> None:
    out = subprocess.run(
        [sys.executable, "examples/distill_custom_teacher.py", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "parity" in line]
    assert len(lines) == 2 and all(line.endswith("parity True") for line in lines)
    teacher = float(re.search(r" teacher +(-?[\d.]+)", lines[0]).group(1))  # type: ignore[union-attr]
    assert teacher > -400  # the hand-written swing-up controller really swings up
