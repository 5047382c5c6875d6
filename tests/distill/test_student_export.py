from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from distill.envs import env_spec
from distill.errors import ExportError
from distill.export import check_parity, export_student, parity_inputs
from distill.student import Student, StudentConfig
from runtime.session import PolicySession

SPEC = env_spec("Pendulum-v1")


def _student(activation: str = "elu") -> Student:
    torch.manual_seed(0)
    s = Student(SPEC.obs_dim, SPEC.act_low, SPEC.act_high, StudentConfig((32, 32), activation))
    s.set_normaliser(np.random.default_rng(0).normal(size=(100, 3)) * [1, 1, 4])
    return s.eval()


def test_student_output_stays_inside_action_bounds_for_extreme_inputs() -> None:
    s = _student()
    with torch.no_grad():
        out = s(torch.tensor([[1e6, -1e6, 1e6], [0.0, 0.0, 0.0]]))
    assert out.shape == (2, 1) and torch.all(out.abs() <= 2.0)


def test_mish_is_refused_as_student_activation() -> None:
    with pytest.raises(ValueError, match="'mish' is not one of"):
        StudentConfig(activation="mish")


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_export_is_one_checked_file_with_dynamic_batch_and_metadata(activation: str) -> None:
    s = _student(activation)
    result = export_student(s, SPEC, {"provenance": {"teacher_digest": "sha256:ab"}})
    model = onnx.load_from_string(result.onnx_bytes)
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["edgeflux.obs_spec"])["high"] == [1.0, 1.0, 8.0]
    assert json.loads(props["edgeflux.provenance"])["teacher_digest"] == "sha256:ab"
    # The normaliser is inside the graph: raw observations in, bounded actions out.
    session = PolicySession(result.onnx_bytes)
    for batch in (1, 7):
        obs = np.random.default_rng(batch).uniform(SPEC.obs_low, SPEC.obs_high, (batch, 3))
        out = session.run(obs.astype(np.float32))
        with torch.no_grad():
            ref = s(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_parity_covers_4096_random_plus_replay_states_and_passes() -> None:
    s = _student()
    states = np.random.default_rng(1).uniform(SPEC.obs_low, SPEC.obs_high, (500, 3))
    inputs = parity_inputs(SPEC, states)
    assert len(inputs) == 4096 + 500
    assert np.all(inputs >= SPEC.obs_low) and np.all(inputs <= SPEC.obs_high)
    report = check_parity(s, export_student(s, SPEC, {}).onnx_bytes, inputs)
    assert report.passed and report.n == 4596 and report.max_abs < 1e-5


def test_parity_fails_when_graph_and_weights_differ() -> None:
    s = _student()
    exported = export_student(s, SPEC, {}).onnx_bytes
    with torch.no_grad():
        s.net[0].weight.add_(1e-2)  # torch changes after export: parity must notice
    report = check_parity(s, exported, parity_inputs(SPEC, None, n_random=256))
    assert not report.passed and report.max_abs > 1e-4


def test_legacy_exporter_fallback_produces_equivalent_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distill import export

    def broken(*_: object) -> bytes:
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    s = _student()
    result = export_student(s, SPEC, {})
    assert result.exporter == "legacy"
    assert check_parity(s, result.onnx_bytes, parity_inputs(SPEC, None, n_random=512)).passed


def test_every_exporter_failing_is_an_export_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill import export

    def broken(*_: object) -> bytes:
        raise RuntimeError("no exporter")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    monkeypatch.setattr(export, "_export_legacy", broken)
    with pytest.raises(ExportError, match="every ONNX exporter failed: dynamo: no exporter"):
        export_student(_student(), SPEC, {})
