"""Fixtures for runtime tests: signed bundles of tiny real ONNX policies on short robot roots."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.bundle import DeviceProfile, create_bundle, generate_signing_key, sign_bundle
from runtime.layout import RobotLayout
from runtime.loop import LoadedPolicy
from runtime.manifest import BundleManifest
from runtime.session import PolicySession
from runtime.trust import TrustStore
from tests.runtime import _models

OBS, ACT = 3, 1  # Pendulum-v1: cos θ, sin θ, θ̇ → torque


def manifest(**overrides: Any) -> BundleManifest:
    control = {"rate_hz": 50, "deadline_ms": 15, "fallback": "zero"}
    control.update(overrides.pop("control", {}))
    data: dict[str, Any] = {
        "schema": "edgeflux.bundle/v1",
        "name": "pendulum",
        "version": "1.0.0",
        "sequence": 1,
        "io": {
            "inputs": [{"name": "obs", "shape": [-1, OBS], "dtype": "float32"}],
            "outputs": [{"name": "action", "shape": [-1, ACT], "dtype": "float32"}],
            "obs_low": [-1.0, -1.0, -8.0],
            "obs_high": [1.0, 1.0, 8.0],
            "action_low": [-2.0],
            "action_high": [2.0],
        },
        "control": control,
    }
    data.update(overrides)
    return BundleManifest.model_validate(data)


def loaded(model: bytes, **overrides: Any) -> LoadedPolicy:
    """A policy for loop tests that need no signature (the loop never verifies)."""
    return LoadedPolicy(manifest=manifest(**overrides), session=PolicySession(model, warmup_runs=2))


@pytest.fixture
def root() -> Iterator[Path]:
    """A short robot root: unix socket paths must stay under 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="efr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def layout(root: Path, signing_key: Path) -> RobotLayout:
    lay = RobotLayout.at(root)
    lay.ensure()
    TrustStore(lay.trust).add("models", signing_key.with_suffix(".pub").read_bytes())
    return lay


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kdir = tmp_path_factory.mktemp("keys")
    generate_signing_key(kdir / "signing.pem", kdir / "signing.pub")
    return kdir / "signing.pem"


@pytest.fixture
def device() -> DeviceProfile:
    return DeviceProfile(
        runtime_version="0.1.0",
        execution_providers=["CPUExecutionProvider"],
        hardware_tags=[],
        max_opset=21,
    )


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, signing_key: Path) -> BundleFactory:
    """make_bundle(model_bytes, version=..., sequence=..., control={...}) -> signed bundle dir."""
    counter = iter(range(1000))

    def factory(model: bytes | None = None, **fields: Any) -> Path:
        n = next(counter)
        src = tmp_path / f"src-{n}.onnx"
        src.write_bytes(model if model is not None else _models.mlp(OBS, ACT))
        bdir = create_bundle(src, manifest(**fields), tmp_path / f"bundle-{n}")
        sign_bundle(bdir, signing_key)
        return bdir

    return factory
