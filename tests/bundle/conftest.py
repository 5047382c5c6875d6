"""Fixtures for bundle tests: tiny real ONNX policies, keys, trust stores, signed bundles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.bundle import DeviceProfile, create_bundle, generate_signing_key, sign_bundle
from runtime.manifest import BundleManifest
from runtime.trust import TrustStore


def make_policy(
    path: Path,
    *,
    obs_dim: int = 3,
    act_dim: int = 2,
    opset: int = 17,
    extra_nodes: list[onnx.NodeProto] | None = None,
    initializer_size: int | None = None,
    seed: int = 0,
) -> Path:
    """obs[batch, obs_dim] -> tanh(obs @ W) -> action[batch, act_dim], a real ONNX model."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((obs_dim, act_dim)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["obs", "W"], ["h"]),
        helper.make_node("Tanh", ["h"], ["action"]),
    ]
    inits = [numpy_helper.from_array(w, "W")]
    if initializer_size:
        # An unused big initializer: makes the file large without changing the function.
        inits.append(numpy_helper.from_array(np.zeros(initializer_size // 4, np.float32), "pad"))
    graph = helper.make_graph(
        nodes + (extra_nodes or []),
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_manifest(obs_dim: int = 3, act_dim: int = 2, **overrides: Any) -> BundleManifest:
    data: dict[str, Any] = {
        "schema": "edgeflux.bundle/v1",
        "name": "pendulum",
        "version": "1.0.0",
        "sequence": 1,
        "io": {
            "inputs": [{"name": "obs", "shape": [-1, obs_dim], "dtype": "float32"}],
            "outputs": [{"name": "action", "shape": [-1, act_dim], "dtype": "float32"}],
            "obs_low": [-1.0] * obs_dim,
            "obs_high": [1.0] * obs_dim,
            "action_low": [-2.0] * act_dim,
            "action_high": [2.0] * act_dim,
        },
        "control": {"rate_hz": 50, "deadline_ms": 5},
    }
    data.update(overrides)
    return BundleManifest.model_validate(data)


@dataclass
class Keys:
    private: Path
    public: Path
    key_id: str


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    kdir = tmp_path / "keys"
    kid = generate_signing_key(kdir / "signing.pem", kdir / "signing.pub")
    return Keys(kdir / "signing.pem", kdir / "signing.pub", kid)


@pytest.fixture
def trust(tmp_path: Path, keys: Keys) -> TrustStore:
    store = TrustStore(tmp_path / "trust")
    store.add("models", keys.public.read_bytes())
    return store


@pytest.fixture
def device() -> DeviceProfile:
    return DeviceProfile(
        runtime_version="0.1.0",
        execution_providers=["CPUExecutionProvider"],
        hardware_tags=["x86_64", "linux"],
        max_opset=21,
    )


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> BundleFactory:
    """Create and sign a bundle; keyword arguments override manifest fields."""
    counter = iter(range(1000))

    def factory(
        sign: bool = True, policy_kwargs: dict[str, Any] | None = None, **fields: Any
    ) -> Path:
        n = next(counter)
        policy = make_policy(tmp_path / f"src-{n}.onnx", **(policy_kwargs or {}))
        bdir = create_bundle(policy, make_manifest(**fields), tmp_path / f"bundle-{n}")
        if sign:
            sign_bundle(bdir, keys.private)
        return bdir

    return factory


@pytest.fixture
def bundle(make_bundle: BundleFactory) -> Path:
    return make_bundle()


def snapshot(directory: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `directory` with its mode and content (None for directories)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    if not directory.exists():
        return out
    for p in sorted(directory.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(directory))] = (st.st_mode, data)
    return out


def force_sign(
    bundle_dir: Path,
    private_key: Path,
    *,
    payload_type: str = "application/vnd.in-toto+json",
    mutate: Callable[[dict[str, Any]], None] | None = None,
    extra_signatures: int = 0,
    hint: str | None = None,
) -> None:
    """Sign whatever is in `bundle_dir` with no sanity checks (to build hostile bundles).

    `mutate` edits the statement before signing, so the signature over it is *valid*
    and only the verifier's later checks can catch the problem.
    """
    import hashlib
    import json

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from protos.dsse import Envelope, Signature, pae
    from runtime.bundle._oms import SigstoreBundle, build_statement
    from runtime.trust import key_id

    digests = {
        p.relative_to(bundle_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != "model.sig"
    }
    payload = build_statement(bundle_dir.name, digests)
    if mutate is not None:
        statement = json.loads(payload)
        mutate(statement)
        payload = json.dumps(statement, indent=2).encode()
    key = serialization.load_pem_private_key(private_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sig = key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    envelope = Envelope(payload_type, payload, (Signature("", sig),))
    claimed = hint if hint is not None else key_id(key.public_key())
    text = SigstoreBundle(claimed, envelope).to_json()
    if extra_signatures:
        obj = json.loads(text)
        obj["dsseEnvelope"]["signatures"] *= 1 + extra_signatures
        text = json.dumps(obj)
    (bundle_dir / "model.sig").write_text(text)


def rewrite_manifest(bundle_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit edgeflux.json as raw JSON (bypassing the model) and keep it on disk."""
    import json

    path = bundle_dir / "edgeflux.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
