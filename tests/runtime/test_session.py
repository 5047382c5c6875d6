from __future__ import annotations

import numpy as np
import pytest

from runtime.session import (
    PolicySession,
    SessionError,
    available_providers,
    engine_cache_key,
)
from tests.runtime import _models


def test_step_through_iobinding_equals_plain_run() -> None:
    s = PolicySession(_models.mlp(17, 6, (64, 64)), warmup_runs=3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.uniform(-1, 1, 17).astype(np.float32)
        np.testing.assert_allclose(s.step(x), s.run(x[None])[0], rtol=1e-6, atol=1e-7)
    assert s.obs_size == 17 and s.action_size == 6


def test_provider_actually_used_is_read_back() -> None:
    s = PolicySession(_models.mlp(), allowed_providers=["CPUExecutionProvider"])
    assert s.provider == "CPUExecutionProvider"
    assert s.providers == ["CPUExecutionProvider"]


def test_no_allowed_provider_is_a_clear_error() -> None:
    with pytest.raises(SessionError, match="no usable execution provider"):
        PolicySession(_models.mlp(), allowed_providers=["NoSuchExecutionProvider"])


def test_garbage_model_is_a_session_error() -> None:
    with pytest.raises(SessionError, match="could not load"):
        PolicySession(b"not an onnx model")


def test_nan_and_inf_from_the_policy_come_back_unchanged() -> None:
    s = PolicySession(_models.constant(3, [np.nan, np.inf]))
    out = s.step(np.zeros(3, np.float32))
    assert np.isnan(out[0]) and np.isinf(out[1])


def test_exception_inside_onnxruntime_becomes_session_error() -> None:
    s = PolicySession(_models.fails_when_first_obs_above(3, 1, threshold=0.5))
    assert s.step(np.asarray([0.1, 0, 0], np.float32))[0] == 0.0
    with pytest.raises(SessionError, match="inference failed"):
        s.step(np.asarray([0.9, 0, 0], np.float32))
    # The session still works after a failure.
    assert s.step(np.asarray([0.1, 0, 0], np.float32))[0] == 0.0


def test_engine_cache_key_changes_with_every_component() -> None:
    base = {"gpu": "NVIDIA H100", "tensorrt": "10.3.0", "onnxruntime": "1.22.0", "fp16": False}
    k0 = engine_cache_key("ab" * 32, **base)  # type: ignore[arg-type]
    assert k0 == engine_cache_key("ab" * 32, **base)  # type: ignore[arg-type]
    variants = [
        engine_cache_key("cd" * 32, **base),  # type: ignore[arg-type]
        engine_cache_key("ab" * 32, **{**base, "gpu": "Orin"}),  # type: ignore[arg-type]
        engine_cache_key("ab" * 32, **{**base, "tensorrt": "10.4.0"}),  # type: ignore[arg-type]
        engine_cache_key("ab" * 32, **{**base, "onnxruntime": "1.23.0"}),  # type: ignore[arg-type]
        engine_cache_key("ab" * 32, **{**base, "fp16": True}),  # type: ignore[arg-type]
    ]
    assert len({k0, *variants}) == 6


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in available_providers(), reason="needs onnxruntime-gpu and CUDA"
)
def test_gpu_session_runs_on_cuda_and_matches_cpu(tmp_path: object) -> None:
    model = _models.mlp(17, 6, (256, 256))
    gpu = PolicySession(model, allowed_providers=["CUDAExecutionProvider"], warmup_runs=5)
    cpu = PolicySession(model, allowed_providers=["CPUExecutionProvider"])
    assert gpu.provider == "CUDAExecutionProvider", f"fell back to {gpu.providers}"
    x = np.linspace(-1, 1, 17, dtype=np.float32)
    np.testing.assert_allclose(gpu.step(x), cpu.step(x), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in available_providers(), reason="needs TensorRT"
)
def test_tensorrt_fp16_engine_is_cached_outside_the_bundle(tmp_path: object) -> None:
    from pathlib import Path

    cache = Path(str(tmp_path)) / "engines"
    model = _models.mlp(17, 6, (256, 256))
    s = PolicySession(
        model,
        allowed_providers=["TensorrtExecutionProvider"],
        fp16=True,
        engine_cache_dir=cache,
        warmup_runs=2,
    )
    assert s.provider == "TensorrtExecutionProvider", f"fell back to {s.providers}"
    assert s.engine_cache is not None and any(s.engine_cache.iterdir())
