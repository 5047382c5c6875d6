"""The happy path: create → sign → verify, and what a verified bundle reports."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from runtime.bundle import (
    BundleError,
    DeviceProfile,
    VerifiedBundle,
    create_bundle,
    io_spec_from_onnx,
    verify_bundle,
)
from runtime.trust import TrustStore
from tests.bundle.conftest import BundleFactory, Keys, make_manifest, make_policy


def test_create_sign_verify_reports_digests_signer_and_manifest(
    bundle: Path, trust: TrustStore, keys: Keys, device: DeviceProfile
) -> None:
    verified = verify_bundle(bundle, trust, device=device)
    assert isinstance(verified, VerifiedBundle)
    policy_sha = hashlib.sha256((bundle / "policy.onnx").read_bytes()).hexdigest()
    manifest_sha = hashlib.sha256((bundle / "edgeflux.json").read_bytes()).hexdigest()
    assert verified.policy_sha256 == policy_sha
    assert verified.files == {"edgeflux.json": manifest_sha, "policy.onnx": policy_sha}
    # OMS v1.0 root digest: sha256 over the raw per-file digests in name order.
    root = hashlib.sha256(bytes.fromhex(manifest_sha) + bytes.fromhex(policy_sha)).hexdigest()
    assert verified.root_digest == root
    assert verified.signer_key_id == keys.key_id
    assert verified.manifest.name == "pendulum" and verified.manifest.sequence == 1


def test_bundle_directory_holds_exactly_policy_manifest_and_signature(bundle: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == ["edgeflux.json", "model.sig", "policy.onnx"]
    sig = json.loads((bundle / "model.sig").read_text())
    assert sig["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert sig["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"


def test_create_fills_opset_from_graph_and_keeps_unknown_fields(tmp_path: Path) -> None:
    policy = make_policy(tmp_path / "p.onnx", opset=13)
    manifest = make_manifest(x_future_field={"kept": True})
    out = create_bundle(policy, manifest, tmp_path / "b")
    written = json.loads((out / "edgeflux.json").read_text())
    assert written["compatibility"]["opset"] == 13
    assert written["x_future_field"] == {"kept": True}


def test_io_spec_from_onnx_reads_names_shapes_and_dtypes(tmp_path: Path) -> None:
    inputs, outputs = io_spec_from_onnx(make_policy(tmp_path / "p.onnx", obs_dim=5, act_dim=1))
    assert [(t.name, t.shape, t.dtype) for t in inputs] == [("obs", ["batch", 5], "float32")]
    assert [(t.name, t.shape, t.dtype) for t in outputs] == [("action", ["batch", 1], "float32")]


def test_io_spec_from_onnx_matches_the_onnx_package(tmp_path: Path) -> None:
    import onnx

    path = make_policy(tmp_path / "p.onnx", obs_dim=7, act_dim=4)
    model = onnx.load(path)
    inputs, outputs = io_spec_from_onnx(path)
    want_in = [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in model.graph.input
    ]
    assert [t.shape for t in inputs] == want_in
    assert [t.name for t in outputs] == [v.name for v in model.graph.output]


def test_verify_of_unsigned_bundle_is_a_bundle_error(
    make_bundle: BundleFactory, trust: TrustStore
) -> None:
    unsigned = make_bundle(sign=False)
    with pytest.raises(BundleError, match=r"model\.sig"):
        verify_bundle(unsigned, trust)


def test_keygen_writes_private_key_mode_0600(keys: Keys) -> None:
    assert stat.S_IMODE(keys.private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in keys.private.read_bytes()


def test_sign_refuses_a_bundle_the_robot_would_refuse_and_writes_nothing(
    make_bundle: BundleFactory, keys: Keys
) -> None:
    import json as _json

    from runtime.bundle import BundleOnnxError, sign_bundle

    bdir = make_bundle(sign=False)
    data = _json.loads((bdir / "edgeflux.json").read_text())
    data["io"]["inputs"][0]["shape"] = [-1, 4]
    (bdir / "edgeflux.json").write_text(_json.dumps(data))
    with pytest.raises(BundleOnnxError, match=r"has shape \['batch', 3\] in the graph"):
        sign_bundle(bdir, keys.private)
    assert sorted(p.name for p in bdir.iterdir()) == ["edgeflux.json", "policy.onnx"]


def test_resigning_with_another_key_replaces_the_signature(
    bundle: Path, trust: TrustStore, tmp_path: Path
) -> None:
    from runtime.bundle import generate_signing_key, sign_bundle

    other = generate_signing_key(tmp_path / "o.pem", tmp_path / "o.pub")
    sign_bundle(bundle, tmp_path / "o.pem")
    trust.add("models", (tmp_path / "o.pub").read_bytes())
    assert verify_bundle(bundle, trust).signer_key_id == other
    assert sorted(p.name for p in bundle.iterdir()) == ["edgeflux.json", "model.sig", "policy.onnx"]


def test_create_refuses_an_existing_non_empty_directory(bundle: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(BundleError, match="already exists"):
        create_bundle(make_policy(tmp_path / "q.onnx"), make_manifest(), bundle)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_create_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    from runtime.bundle import BundleOnnxError

    (tmp_path / "x.onnx").write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(BundleOnnxError, match="not a valid ONNX model"):
        create_bundle(tmp_path / "x.onnx", make_manifest(), tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


def test_progress_callback_counts_every_hashed_byte(bundle: Path, trust: TrustStore) -> None:
    seen: list[int] = []
    verify_bundle(bundle, trust, progress=seen.append)
    signed = sum((bundle / n).stat().st_size for n in ("policy.onnx", "edgeflux.json"))
    assert sum(seen) == signed


def test_public_api_other_components_build_on_is_exported() -> None:
    import runtime.antirollback
    import runtime.bundle
    import runtime.trust

    agreed = {
        "create_bundle", "io_spec_from_onnx", "generate_signing_key", "sign_bundle",
        "verify_bundle", "VerifiedBundle", "DeviceProfile", "pack_bundle", "unpack_bundle",
        "unpack_and_verify", "BundleError", "BundleSignatureError", "BundleFileSetError",
        "BundleDigestError", "BundleManifestError", "BundleCompatibilityError",
        "BundleRollbackError", "BundleArchiveError", "BundleOnnxError", "POLICY_NAME",
    }  # fmt: skip
    assert agreed <= set(runtime.bundle.__all__)
    for name in runtime.bundle.__all__:
        assert getattr(runtime.bundle, name) is not None
    assert {"TrustStore", "key_id"} <= set(runtime.trust.__all__)
    assert "AntiRollbackStore" in runtime.antirollback.__all__
    fields = set(VerifiedBundle.__dataclass_fields__)
    assert fields == {
        "path", "manifest", "policy_sha256", "root_digest", "signer_key_id", "files",
        "external_data",
    }  # fmt: skip
    for cls in vars(runtime.bundle).values():
        if isinstance(cls, type) and issubclass(cls, BundleError):
            assert isinstance(cls.reason, str) and cls.reason
