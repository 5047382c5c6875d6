"""A student whose weights go to ONNX external data: exported, checked, run through the
runtime's session, packaged, signed and verified file by file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from distill import export as export_mod
from distill.envs import env_spec
from distill.errors import ExportError
from distill.export import check_parity, export_student, parity_inputs
from distill.package import package_bundle
from distill.student import Student, StudentConfig
from runtime.bundle import BundleError, generate_signing_key, verify_bundle
from runtime.trust import TrustStore

SPEC = env_spec("Pendulum-v1")


def _student() -> Student:
    torch.manual_seed(0)
    s = Student(SPEC.obs_dim, SPEC.act_low, SPEC.act_high, StudentConfig((64, 64), "relu"))
    s.set_normaliser(np.random.default_rng(0).normal(size=(100, 3)))
    return s.eval()


def test_a_student_over_the_threshold_exports_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _student()
    assert not export_student(s, SPEC, {}).external_data  # small: one file
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_THRESHOLD_BYTES", 1024)
    result = export_student(s, SPEC, {"provenance": {"teacher_digest": "sha256:ab"}})
    assert result.external_data
    with pytest.raises(ExportError, match="external data"):
        _ = result.onnx_bytes
    graph, data = result.save(tmp_path / "policy.onnx")
    assert data.name == "policy.onnx.data" and data.stat().st_size >= 64 * 64 * 4
    assert graph.stat().st_size < data.stat().st_size
    loaded = onnx.load(str(graph), load_external_data=False)
    external = [t for t in loaded.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {
        e.value for t in external for e in t.external_data if e.key == "location"
    } == {"policy.onnx.data"}
    # The runtime's session loads it from its files, and agrees with torch.
    report = check_parity(s, graph, parity_inputs(SPEC, None, n_random=256))
    assert report.passed, report
    # Saved twice: the same bytes (the result keeps its weights).
    (tmp_path / "again").mkdir()
    _, data2 = result.save(tmp_path / "again" / "policy.onnx")
    assert data2.read_bytes() == data.read_bytes()


def test_packaging_signs_and_verifies_the_external_data_file(tmp_path: Path) -> None:
    s = _student()
    result = export_student(s, SPEC, {}, external_data=True)
    src = tmp_path / "export"
    src.mkdir()
    graph, _ = result.save(src / "policy.onnx")
    generate_signing_key(tmp_path / "k.pem", tmp_path / "k.pub")
    trust = TrustStore(tmp_path / "trust")
    trust.add("models", (tmp_path / "k.pub").read_bytes())
    args = {"spec": SPEC, "name": "pendulum", "version": "1.0.0", "sequence": 1, "provenance": {}}
    bundle, _ = package_bundle(graph, args, tmp_path / "bundle", sign_key=tmp_path / "k.pem")
    assert (bundle / "policy.onnx.data").is_file()
    verify_bundle(bundle, trust)
    weights = bytearray((bundle / "policy.onnx.data").read_bytes())
    weights[100] ^= 0x01
    (bundle / "policy.onnx.data").write_bytes(bytes(weights))
    with pytest.raises(BundleError, match=r"policy\.onnx\.data"):
        verify_bundle(bundle, trust)


def test_distill_run_with_external_data_packages_and_signs_the_weights_file(
    tmp_path: Path,
) -> None:
    from distill.dagger import DaggerConfig
    from distill.pipeline import DistillConfig, run_pipeline

    generate_signing_key(tmp_path / "k.pem", tmp_path / "k.pub")
    cfg = DistillConfig(
        out_dir=tmp_path / "out",
        sign_key=tmp_path / "k.pem",
        eval_episodes=2,
        dagger=DaggerConfig(rounds=1, envs_per_round=2, epochs=1),
        external_data=True,
    )
    summary = run_pipeline(cfg).summary
    assert summary["external_data"] is True and summary["numeric_parity"]["passed"]
    bundle = Path(summary["bundle_dir"])
    assert (bundle / "policy.onnx.data").is_file()
    trust = TrustStore(tmp_path / "trust")
    trust.add("models", (tmp_path / "k.pub").read_bytes())
    verify_bundle(bundle, trust)
