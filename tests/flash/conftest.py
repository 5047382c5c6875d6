"""Flash fixtures: a real control-plane home with a registered device, and a signed
Pendulum-shaped bundle (3 observations, 1 torque) signed with the home's key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflux.cli import root
from tests.runtime._models import mlp


@dataclass(frozen=True)
class Plane:
    home: Path
    device: str


def add_device(home: Path, device_id: str) -> None:
    result = CliRunner().invoke(root, ["cloud", "device", "add", device_id, "--home", str(home)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Plane:
    from cloud.home import init_home

    home = tmp_path_factory.mktemp("flash") / "plane"
    init_home(home)
    add_device(home, "robot-1")
    add_device(home, "robot-2")
    return Plane(home, "robot-1")


def make_pendulum_bundle(
    out: Path, signing_key: Path, *, version: str = "1.0.0", sequence: int = 1, seed: int = 0
) -> Path:
    from runtime.bundle import create_bundle, sign_bundle
    from runtime.manifest import BundleManifest

    onnx_path = out.parent / f"{out.name}.onnx"
    onnx_path.write_bytes(mlp(obs=3, act=1, hidden=(16,), seed=seed))
    manifest = BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": "pendulum",
            "version": version,
            "sequence": sequence,
            "io": {
                "inputs": [{"name": "obs", "shape": ["batch", 3], "dtype": "float32"}],
                "outputs": [{"name": "action", "shape": ["batch", 1], "dtype": "float32"}],
                "obs_low": [-1.0, -1.0, -8.0],
                "obs_high": [1.0, 1.0, 8.0],
                "action_low": [-2.0],
                "action_high": [2.0],
            },
            "control": {"rate_hz": 20.0, "deadline_ms": 20.0, "fallback": "zero"},
            "compatibility": {"execution_providers": ["CPUExecutionProvider"]},
        }
    )
    create_bundle(onnx_path, manifest, out)
    sign_bundle(out, signing_key)
    return out


@pytest.fixture(scope="module")
def bundle(plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud.home import CloudHome

    key = CloudHome.at(plane.home).key_path("model-signing", private=True)
    return make_pendulum_bundle(tmp_path_factory.mktemp("bundles") / "pendulum-1.0.0", key)


def flash_args(
    plane: Plane, bundle: Path, target: str, *extra: str, device: str | None = None
) -> list[str]:
    return [
        "flash",
        "--device",
        device or plane.device,
        "--target",
        target,
        "--bundle",
        str(bundle),
        "--home",
        str(plane.home),
        "--cloud",
        "127.0.0.1:7443",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--adapter",
        "gym",
        "--adapter-option",
        "env=Pendulum-v1",
        "--no-wheelhouse",
        *extra,
    ]
