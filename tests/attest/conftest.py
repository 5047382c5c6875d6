"""Fixtures for attestation tests: signed Pendulum bundles, trust stores, attestation keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloud.attest.statement import AttestationKey, generate_key
from runtime.bundle import create_bundle, generate_signing_key, sign_bundle
from runtime.manifest import BundleManifest
from runtime.trust import TrustStore

PENDULUM_OBS_LOW = [-1.0, -1.0, -8.0]
PENDULUM_OBS_HIGH = [1.0, 1.0, 8.0]


def linear_pendulum_policy(path: Path, gain: float = 1.0) -> Path:
    """action = 2·tanh(gain · obs @ W): a real, simple (and poor) Pendulum controller."""
    w = np.array([[0.0], [-2.0], [-0.5]], dtype=np.float32) * gain
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Mul", ["t", "two"], ["action"]),
        ],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def pendulum_manifest(name: str = "pendulum", seeds: list[int] | None = None) -> BundleManifest:
    return BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": name,
            "version": "1.0.0",
            "sequence": 1,
            "io": {
                "inputs": [{"name": "obs", "shape": [-1, 3], "dtype": "float32"}],
                "outputs": [{"name": "action", "shape": [-1, 1], "dtype": "float32"}],
                "obs_low": PENDULUM_OBS_LOW,
                "obs_high": PENDULUM_OBS_HIGH,
                "action_low": [-2.0],
                "action_high": [2.0],
            },
            "control": {"rate_hz": 20, "deadline_ms": 5},
            "provenance": {"env_id": "Pendulum-v1", "seeds": seeds or [1, 2, 3]},
        }
    )


@dataclass
class Keys:
    signing: Path
    trust_dir: Path
    attest: AttestationKey
    attest_path: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    kdir = tmp_path / "keys"
    generate_signing_key(kdir / "signing.pem", kdir / "signing.pub")
    trust = TrustStore(tmp_path / "trust")
    trust.add("models", (kdir / "signing.pub").read_bytes())
    attest = generate_key(kdir / "attest.key")
    trust.add("attestation", attest.public_pem())
    return Keys(kdir / "signing.pem", tmp_path / "trust", attest, kdir / "attest.key")


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> BundleFactory:
    counter = iter(range(1000))

    def factory(onnx_path: Path | None = None, name: str = "pendulum", **kw) -> Path:
        n = next(counter)
        src = onnx_path or linear_pendulum_policy(tmp_path / f"src-{n}.onnx", **kw)
        bdir = create_bundle(src, pendulum_manifest(name), tmp_path / f"bundle-{n}")
        sign_bundle(bdir, keys.signing)
        return bdir

    return factory
