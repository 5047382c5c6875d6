"""Cloud fixtures: a store on SQLite and on a real PostgreSQL (same tests run on both)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.store import Store

_db_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'plane.db'}"
    pg = request.getfixturevalue("postgres")
    return str(pg.create_database(f"cloud_{next(_db_names)}"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    yield s
    s.close()


# --------------------------------------------------------------------------- bundles
def make_policy(path: Path, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> Path:
    """A real, tiny ONNX policy: action = tanh(obs @ W)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((obs_dim, act_dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["action"]),
        ],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_bundle(
    out: Path,
    signing_key: Path | None,
    *,
    name: str = "pendulum",
    version: str = "1.0.0",
    sequence: int = 1,
    seed: int = 0,
) -> Path:
    """Create (and sign with `signing_key`, unless None) a bundle directory at `out`."""
    from runtime.bundle import create_bundle, sign_bundle
    from runtime.manifest import BundleManifest

    manifest = BundleManifest.model_validate(
        {
            "schema": "edgeflux.bundle/v1",
            "name": name,
            "version": version,
            "sequence": sequence,
            "io": {
                "inputs": [{"name": "obs", "shape": [-1, 3], "dtype": "float32"}],
                "outputs": [{"name": "action", "shape": [-1, 2], "dtype": "float32"}],
                "obs_low": [-1.0] * 3,
                "obs_high": [1.0] * 3,
                "action_low": [-2.0] * 2,
                "action_high": [2.0] * 2,
            },
            "control": {"rate_hz": 50, "deadline_ms": 5},
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    policy = make_policy(out.parent / f".{out.name}.onnx", seed=seed)
    create_bundle(policy, manifest, out)
    if signing_key is not None:
        sign_bundle(out, signing_key)
    return out
