"""`edgeflux distill ...` as a user types it, end to end through the real bundle and runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgeflux.cli import root
from runtime.layout import RobotLayout
from runtime.trust import TrustStore

REPO = Path(__file__).resolve().parents[2]
TINY = ["--eval-episodes", "3", "--rounds", "2", "--envs-per-round", "2", "--epochs", "3"]


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(root, [str(a) for a in args])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    res = cli("bundle", "keygen", "--private", d / "k.pem", "--public", d / "k.pub")
    assert res.exit_code == 0, res.output
    return d / "k.pem", d / "k.pub"


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> dict:
    out = tmp_path_factory.mktemp("run") / "out"
    res = cli("distill", "run", "--env", "Pendulum-v1", "--teacher", "oracle", "--out", out,
              "--sign-key", keys[0], "--json", *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    return summary


def test_distill_run_writes_signed_bundle_curves_and_summary(distilled: dict) -> None:
    bundle = Path(distilled["bundle_dir"])
    assert sorted(p.name for p in bundle.iterdir()) == ["edgeflux.json", "model.sig", "policy.onnx"]
    out = bundle.parent
    for name in ("curves.png", "curves.json", "summary.json", "dagger_data.npz"):
        assert (out / name).stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert distilled["numeric_parity"]["passed"] and distilled["numeric_parity"]["n"] >= 4096
    assert distilled["teacher_return"] > distilled["random_return"]
    manifest = json.loads((bundle / "edgeflux.json").read_text())
    assert manifest["control"]["rate_hz"] == 20.0
    prov = manifest["provenance"]
    assert prov["env_id"] == "Pendulum-v1" and prov["seeds"] == [0]
    # every DAgger reset seed is recorded, so attestation can prove disjoint evaluation seeds
    dagger = prov["dagger"]
    assert len(prov["dagger_seeds"]) == dagger["rounds"] * dagger["envs_per_round"]
    assert len(set(prov["dagger_seeds"])) == len(prov["dagger_seeds"])
    assert prov["dataset_digest"].startswith("sha256:") and prov["teacher_digest"]
    assert prov["numeric_parity"]["passed"] is True


def test_bundle_verify_accepts_and_runtime_runs_the_distilled_policy(
    distilled: dict, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = Path(distilled["bundle_dir"])
    trust = tmp_path / "trust"
    assert cli("bundle", "trust", "add", keys[1], "--trust-dir", trust).exit_code == 0
    res = cli("bundle", "verify", bundle, "--trust-dir", trust, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True

    robot = RobotLayout.at(tmp_path / "robot")
    robot.trust.mkdir(parents=True, exist_ok=True)
    TrustStore(robot.trust).add("models", keys[1].read_bytes())
    robot.runtime_config.parent.mkdir(parents=True, exist_ok=True)
    robot.runtime_config.write_text("[runtime]\nhealth_max_miss_rate = 0.5\nwarmup_runs = 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflux.cli", "runtime", "run", "--root", str(robot.root),
         "--bundle", str(bundle), "--adapter", "gym", "--adapter-option", "env=Pendulum-v1",
         "--duration", "2", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["ticks"] >= 10


def test_distill_eval_runs_bundle_through_the_runtime_session(
    distilled: dict, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    trust = tmp_path / "trust"
    assert cli("bundle", "trust", "add", keys[1], "--trust-dir", trust).exit_code == 0
    res = cli("distill", "eval", distilled["bundle_dir"], "--episodes", "3",
              "--trust-dir", trust, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    # Same seeds as `distill run` used: the same ONNX policy gives the same mean return.
    assert result["mean_return"] == pytest.approx(distilled["student_return"], rel=1e-6)
    assert result["verified"] is True and result["env_id"] == "Pendulum-v1"


def test_eval_refuses_bundle_for_another_environment(distilled: dict) -> None:
    res = cli("distill", "eval", distilled["bundle_dir"], "--env", "Reacher-v5")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "maps 3 observations to 1 actions, but Reacher-v5 has 10 and 2" in res.output


def test_unknown_env_lists_known_ones_and_writes_nothing(tmp_path: Path) -> None:
    res = cli("distill", "run", "--env", "Hopper-v9", "--out", tmp_path / "o", *TINY)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "unknown environment 'Hopper-v9'; known environments: HalfCheetah-v5" in res.output
    assert not (tmp_path / "o").exists()


def test_bad_signing_key_fails_before_training_and_leaves_no_bundle(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a key")
    res = cli("distill", "run", "--out", tmp_path / "o", "--sign-key", tmp_path / "bad.pem", *TINY)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "not a PEM private key" in res.output
    assert not (tmp_path / "o" / "pendulum-v1-0.1.0").exists()


def test_bad_variant_and_bad_checkpoint_are_user_errors(tmp_path: Path) -> None:
    res = cli("distill", "run", "--out", tmp_path / "o", "--variant", "g:12", *TINY)
    assert res.exit_code == 2 and "'g:12' is not KEY=NUMBER" in res.output
    (tmp_path / "wm.pt").write_bytes(b"garbage")
    res = cli("distill", "run", "--out", tmp_path / "o", "--teacher", "world-model",
              "--wm-checkpoint", tmp_path / "wm.pt", *TINY)  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "not a readable world-model checkpoint" in res.output


def test_rerun_into_an_existing_bundle_is_refused_before_any_work(distilled: dict) -> None:
    bundle = Path(distilled["bundle_dir"])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in bundle.parent.iterdir())
    res = cli("distill", "run", "--out", bundle.parent, *TINY)
    assert res.exit_code == 1 and "already exists" in res.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in bundle.parent.iterdir()) == before


@pytest.mark.parametrize(
    ("variant", "message"),
    [("g=1000", "variant g=1000.0 is outside [0.1, 50.0]"), ("mass=2", "no variant parameter")],
)
def test_a_variant_the_env_refuses_is_one_line_and_leaves_no_directory(
    tmp_path: Path, variant: str, message: str
) -> None:
    res = cli("distill", "run", "--out", tmp_path / "o", "--variant", variant, *TINY)
    assert res.exit_code == 1 and message in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_progress_counts_epochs_and_episodes_without_library_noise(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflux.cli", "distill", "run", "--out", str(tmp_path / "o"),
         *TINY],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "6/6 epochs" in err and "round 2/2" in err  # 2 rounds × 3 epochs
    assert "6/6 episodes" in err and "3/3 episodes" in err  # teacher + random, student
    assert "1/1" not in err
    assert "torchvision" not in err and "settotalmass" not in err
    assert "policy session on" not in err
