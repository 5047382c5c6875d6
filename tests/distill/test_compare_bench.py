"""The family comparison runs both built-in families through the same pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compare_world_models import main


@pytest.mark.slow
def test_both_families_train_distil_and_appear_in_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = main(["--steps", "400", "--seed-steps", "200", "--num-envs", "1", "--utd", "0.05",
                 "--eval-episodes", "2", "--quick", "--out", str(tmp_path)])  # fmt: skip
    assert [r["family"] for r in rows] == ["tdmpc2", "dreamerv3"]
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert [f["family"] for f in line["families"]] == ["tdmpc2", "dreamerv3"]
    assert all(f["parameters"] > 0 and f["train_seconds"] > 0 for f in line["families"])
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for family in ("tdmpc2", "dreamerv3"):
        assert (tmp_path / family / "pendulum-v1-0.1.0" / "policy.onnx").is_file()
