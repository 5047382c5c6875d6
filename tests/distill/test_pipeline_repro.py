from __future__ import annotations

from pathlib import Path

import pytest

from distill.dagger import DaggerConfig
from distill.pipeline import DistillConfig, run_pipeline


@pytest.mark.slow
def test_same_seed_gives_the_same_returns_and_bytes_end_to_end(tmp_path: Path) -> None:
    def run(out: str, seed: int) -> dict:
        cfg = DistillConfig(
            out_dir=tmp_path / out,
            seed=seed,
            eval_episodes=2,
            dagger=DaggerConfig(rounds=2, envs_per_round=2, epochs=2),
        )
        return run_pipeline(cfg).summary

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    for key in ("teacher_return", "student_return", "random_return"):
        assert a[key] == b[key]
    policy = "pendulum-v1-0.1.0/policy.onnx"
    assert (tmp_path / "a" / policy).read_bytes() == (tmp_path / "b" / policy).read_bytes()
    assert a["student_return"] != c["student_return"]  # the seed really matters
