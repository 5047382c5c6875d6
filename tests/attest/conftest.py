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
from distill.teachers import OracleMPPITeacher
from runtime.bundle import create_bundle, generate_signing_key, sign_bundle
from runtime.manifest import BundleManifest
from runtime.trust import TrustStore

PENDULUM_OBS_LOW = [-1.0, -1.0, -8.0]
PENDULUM_OBS_HIGH = [1.0, 1.0, 8.0]


def linear_pendulum_policy(path: Path, gain: float = 1.0, batch: int | str = "batch") -> Path:
    """action = 2·tanh(gain · obs @ W): a real, simple (and poor) Pendulum controller."""
    w = np.array([[0.0], [-2.0], [-0.5]], dtype=np.float32) * gain
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Mul", ["t", "two"], ["action"]),
        ],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [batch, 1])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _energy_numpy(obs: np.ndarray, kp: float) -> np.ndarray:
    c, s, w = obs[:, 0], obs[:, 1], obs[:, 2]
    energy = np.float32(0.5) * w * w + np.float32(10.0) * (c - np.float32(1.0))
    balance = -(np.float32(kp) * np.arctan(s / c) + np.float32(2.0) * w)
    swing = -np.sign(w) * np.sign(energy) * np.float32(2.0)
    return np.clip(np.where(c > 0.8, balance, swing), -2.0, 2.0)[:, None].astype(np.float32)


class EnergyTeacher:
    """Swing up by energy, balance by PD near the top (≈ −200 on Pendulum-v1). Its
    balance gain differs a little from `energy_pendulum_policy`'s, so the paired
    differences are small but not zero."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        return _energy_numpy(np.asarray(obs, np.float32), kp=10.3)

    def digest(self) -> str:
        return "energy-swing-up-v1"


def energy_teacher(env_id: str, variant: object) -> EnergyTeacher:
    """Campaign teacher factory ("tests.attest.conftest:energy_teacher")."""
    return EnergyTeacher()


def energy_pendulum_policy(path: Path, kp: float = 10.0) -> Path:
    """The controller of `EnergyTeacher` (balance gain `kp`) as an ONNX graph: a good student."""
    f = np.float32
    consts = {
        "half": f(0.5), "ten": f(10.0), "one": f(1.0), "two": f(2.0), "m2": f(-2.0),
        "top": f(0.8), "neg": f(-1.0), "kp": f(kp),
    }  # fmt: skip
    cols = {"c": 0, "s": 1, "w": 2}
    nodes = []
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    for name, i in cols.items():
        inits += [
            numpy_helper.from_array(np.array([i], np.int64), f"{name}_lo"),
            numpy_helper.from_array(np.array([i + 1], np.int64), f"{name}_hi"),
        ]
        nodes.append(helper.make_node("Slice", ["obs", f"{name}_lo", f"{name}_hi", "ax"], [name]))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    mk = helper.make_node
    nodes += [
        mk("Mul", ["w", "w"], ["w2"]), mk("Mul", ["w2", "half"], ["kin"]),
        mk("Sub", ["c", "one"], ["c1"]), mk("Mul", ["c1", "ten"], ["pot"]),
        mk("Add", ["kin", "pot"], ["energy"]),
        mk("Div", ["s", "c"], ["ratio"]), mk("Atan", ["ratio"], ["theta"]),
        mk("Mul", ["theta", "kp"], ["p"]), mk("Mul", ["w", "two"], ["d"]),
        mk("Add", ["p", "d"], ["pd"]), mk("Mul", ["pd", "neg"], ["balance"]),
        mk("Sign", ["w"], ["sw"]), mk("Sign", ["energy"], ["se"]),
        mk("Mul", ["sw", "se"], ["sws"]), mk("Mul", ["sws", "m2"], ["swing"]),
        mk("Greater", ["c", "top"], ["near"]),
        mk("Where", ["near", "balance", "swing"], ["u"]),
        mk("Clip", ["u", "m2", "two"], ["action"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "energy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def pendulum_manifest(
    name: str = "pendulum", seeds: list[int] | None = None, **control: object
) -> BundleManifest:
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
            "control": {"rate_hz": 20, "deadline_ms": 5, **control},
            # Distilled from the oracle planner, as `distill run --teacher oracle` records it.
            "provenance": {
                "env_id": "Pendulum-v1",
                "seeds": seeds or [1, 2, 3],
                "teacher_kind": "oracle",
                "teacher_digest": OracleMPPITeacher("Pendulum-v1").digest(),
            },
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

    def factory(
        onnx_path: Path | None = None,
        name: str = "pendulum",
        manifest: BundleManifest | None = None,
        **kw,
    ) -> Path:
        n = next(counter)
        src = onnx_path or linear_pendulum_policy(tmp_path / f"src-{n}.onnx", **kw)
        m = manifest or pendulum_manifest(name)
        bdir = create_bundle(src, m, tmp_path / f"bundle-{n}")
        sign_bundle(bdir, keys.signing)
        return bdir

    return factory
