"""GPU sessions checked against CPU FP32 on calibration observations before they drive.

The comparison runs on real onnxruntime sessions on any machine; the service's use of
it (accept within tolerance, else run CPU FP32 and say why) needs CUDA or TensorRT and
is `gpu`-marked.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.config import RecordingConfig, RuntimeConfig
from runtime.engine_check import EngineCheck, calibration_observations, compare_sessions
from runtime.layout import RobotLayout
from runtime.service import RuntimeService
from runtime.session import PolicySession, available_providers
from tests.runtime import _models
from tests.runtime.conftest import ACT, OBS, BundleFactory, manifest

CPU = ["CPUExecutionProvider"]


def test_calibration_observations_are_fixed_and_inside_the_bounds() -> None:
    m = manifest()
    obs = calibration_observations(m)
    assert obs.shape == (65, OBS) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs, calibration_observations(m))
    assert (obs >= np.float32(m.io.obs_low)).all() and (obs <= np.float32(m.io.obs_high)).all()
    np.testing.assert_allclose(obs[0], [0.0, 0.0, 0.0])  # the midpoint first


def test_same_model_agrees_and_a_different_one_is_refused() -> None:
    obs = calibration_observations(manifest())
    a = PolicySession(_models.mlp(OBS, ACT, seed=0), allowed_providers=CPU)
    a2 = PolicySession(_models.mlp(OBS, ACT, seed=0), allowed_providers=CPU)
    b = PolicySession(_models.mlp(OBS, ACT, seed=1), allowed_providers=CPU)
    same = compare_sessions(a.step, a2.step, obs, provider="X", fp16=False, tolerance=1e-6)
    assert same.ok and same.max_deviation == 0.0
    other = compare_sessions(a.step, b.step, obs, provider="X", fp16=True, tolerance=1e-3)
    assert not other.ok and other.max_deviation > 1e-3
    assert "X FP16 vs CPU FP32 on 65 calibration observations" in other.describe()
    assert "outside the bundle's tolerance 0.001" in other.describe()


def test_non_finite_or_misshapen_answers_never_pass() -> None:
    obs = calibration_observations(manifest())
    good = lambda x: np.zeros(ACT, np.float32)  # noqa: E731
    nan = lambda x: np.full(ACT, np.nan, np.float32)  # noqa: E731
    wide = lambda x: np.zeros(ACT + 1, np.float32)  # noqa: E731
    for bad in (nan, wide):
        got = compare_sessions(bad, good, obs, provider="X", fp16=False, tolerance=1e9)
        assert not got.ok and got.max_deviation == float("inf")
    assert not EngineCheck("X", False, 1, float("nan"), 1.0).ok


GPU = [
    p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available_providers()
]


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs onnxruntime-gpu with CUDA or TensorRT")
@pytest.mark.parametrize("tolerance", [0.05, 1e-12])
def test_runtime_checks_the_gpu_session_and_falls_back_outside_the_tolerance(
    layout: RobotLayout, make_bundle: BundleFactory, tolerance: float
) -> None:
    config = RuntimeConfig(
        adapter="null", adapter_options={"obs_dim": OBS}, fp16=True, warmup_runs=2,
        recording=RecordingConfig(enabled=False),
    )  # fmt: skip
    svc = RuntimeService(layout, config, serve=False)
    bundle = make_bundle(
        _models.mlp(OBS, ACT, (256, 256)),
        control={"rate_hz": 100, "deadline_ms": 9},
        compatibility={"accelerated_tolerance": tolerance},
    )
    svc.start(first_bundle=bundle)
    try:
        st = svc.status()
    finally:
        svc.stop()
    print(st.provider, st.engine_check)  # the figures, for the record (pytest -s)
    if tolerance > 1e-6:
        assert st.provider in GPU and "within the bundle's tolerance" in st.engine_check
    else:  # FP16 (or even FP32 on a GPU) differs from CPU by more than 1e-12
        assert st.provider == "CPUExecutionProvider"
        assert st.engine_check.startswith("fell back to CPU FP32:")
