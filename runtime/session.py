"""The only module that imports onnxruntime: an inference session over one ONNX policy.

Execution providers are tried in the order TensorRT → CUDA → CPU, limited to what
the caller allows and what this onnxruntime build offers. onnxruntime-gpu falls
back to CPU *silently* when CUDA libraries are missing, so the providers actually
in use are read back from the session (`PolicySession.providers`) and logged.

TensorRT engines take minutes to build on a Jetson, so they are cached on disk
*outside* the signed bundle (the bundle's file set is signed exactly), in a
directory keyed by GPU name, TensorRT version, onnxruntime version, precision and
the model's sha256 (`engine_cache_key`): any change in one of them builds afresh
instead of loading an engine built for something else.

The hot path is `step`: one observation in, one action out, through an IOBinding
whose input and output buffers are allocated once (on the CPU they are numpy arrays
that onnxruntime reads and writes in place; on a GPU they are device OrtValues).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = [
    "DEFAULT_PROVIDER_ORDER",
    "PolicySession",
    "SessionError",
    "available_providers",
    "engine_cache_key",
    "onnxruntime_version",
]

log = logging.getLogger(__name__)

DEFAULT_PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
_GPU_PROVIDERS = frozenset(DEFAULT_PROVIDER_ORDER[:2])


class SessionError(RuntimeError):
    """The policy could not be loaded or run."""


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (not proof that they work)."""
    return list(ort.get_available_providers())


def onnxruntime_version() -> str:
    return str(ort.__version__)


def _gpu_name(device_id: int) -> str:
    """The GPU's marketing name, without importing torch or CUDA bindings."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if out:
            return out
    with contextlib.suppress(OSError):  # Jetson: no nvidia-smi, the board names itself
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    return "unknown-gpu"


def _tensorrt_version() -> str:
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-libs", "tensorrt_cu12_libs"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    with contextlib.suppress(OSError, AttributeError):
        lib = ctypes.CDLL("libnvinfer.so")
        v = int(lib.getInferLibVersion())
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return "unknown-trt"


def engine_cache_key(
    model_sha256: str, *, gpu: str, tensorrt: str, onnxruntime: str, fp16: bool
) -> str:
    """Directory name for TensorRT engines of one model on one GPU/software stack."""
    text = "\n".join([gpu, tensorrt, onnxruntime, "fp16" if fp16 else "fp32", model_sha256])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _static_shape(shape: Sequence[int | str | None]) -> tuple[int, ...]:
    # Dynamic dimensions (batch) are run with size 1: one observation per tick.
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


class PolicySession:
    """One ONNX policy with a single float input (observation) and output (action).

    `run` takes a batch (any shape the graph accepts); `step` is the per-tick hot path
    for one observation vector and returns a view of the preallocated output buffer,
    valid until the next `step`.
    """

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        allowed_providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
        fp16: bool = False,
        engine_cache_dir: str | Path | None = None,
        device_id: int = 0,
        warmup_runs: int = 0,
    ) -> None:
        offered = available_providers()
        wanted = [
            p
            for p in DEFAULT_PROVIDER_ORDER
            if (allowed_providers is None or p in allowed_providers) and p in offered
        ]
        if not wanted:
            raise SessionError(
                f"no usable execution provider: allowed {list(allowed_providers or [])}, "
                f"available {offered}"
            )
        if isinstance(model, bytes):
            model_bytes: bytes | None = model
            label = "<bytes>"
        else:
            model_bytes = None
            label = str(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 4  # failures surface as SessionError, not as stderr noise
        self.engine_cache: Path | None = None
        providers: list[str | tuple[str, dict[str, Any]]] = []
        for p in wanted:
            if p == "TensorrtExecutionProvider":
                providers.append(
                    (p, self._trt_options(model, model_bytes, fp16, engine_cache_dir, device_id))
                )
            elif p == "CUDAExecutionProvider":
                providers.append((p, {"device_id": device_id}))
            else:
                providers.append(p)
        source = model_bytes if model_bytes is not None else label
        try:
            self._session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SessionError(f"onnxruntime could not load {label}: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        if allowed_providers is not None and self.providers[0] not in allowed_providers:
            raise SessionError(
                f"onnxruntime runs {label} on {self.providers[0]} (GPU libraries missing?), "
                f"which is not among the allowed providers {list(allowed_providers)}"
            )
        if wanted[0] != self.providers[0]:
            log.warning(
                "execution provider fell back from %s to %s (missing GPU libraries?)",
                wanted[0],
                self.providers[0],
                extra={"wanted": wanted[0], "using": self.providers[0]},
            )
        else:
            log.info("policy session on %s", self.providers[0], extra={"using": self.providers[0]})
        self.fp16 = fp16 and self.providers[0] == "TensorrtExecutionProvider"
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise SessionError(
                f"{label}: a policy has exactly one input and at least one output, "
                f"found {len(inputs)} inputs and {len(outputs)} outputs"
            )
        for arg in (inputs[0], outputs[0]):
            if arg.type != "tensor(float)":
                raise SessionError(
                    f"{label}: {arg.name} is {arg.type}; the runtime feeds and reads float32"
                )
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        self.output_shape: list[int | str | None] = list(outputs[0].shape)
        self._device_id = device_id
        self._bind()
        for _ in range(warmup_runs):
            self.step(np.zeros(self.obs_size, np.float32))

    def _trt_options(
        self,
        model: str | Path | bytes,
        model_bytes: bytes | None,
        fp16: bool,
        cache_dir: str | Path | None,
        device_id: int,
    ) -> dict[str, Any]:
        options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": fp16}
        if cache_dir is not None:
            data = model_bytes if model_bytes is not None else Path(model).read_bytes()  # type: ignore[arg-type]
            key = engine_cache_key(
                hashlib.sha256(data).hexdigest(),
                gpu=_gpu_name(device_id),
                tensorrt=_tensorrt_version(),
                onnxruntime=onnxruntime_version(),
                fp16=fp16,
            )
            self.engine_cache = Path(cache_dir) / key
            self.engine_cache.mkdir(parents=True, exist_ok=True)
            options |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(self.engine_cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(self.engine_cache),
            }
        return options

    def _bind(self) -> None:
        """Allocate the hot path's buffers once and bind them to the graph."""
        in_shape = _static_shape(self.input_shape)
        probe = np.zeros(in_shape, np.float32)
        try:
            out_shape = self._session.run([self.output_name], {self.input_name: probe})[0].shape
        except Exception as exc:
            raise SessionError(
                f"the policy failed on a zero observation of shape {in_shape}: {exc}"
            ) from exc
        self.obs_size = int(np.prod(in_shape))
        self.action_size = int(np.prod(out_shape))
        self._on_gpu = self.providers[0] in _GPU_PROVIDERS
        self._binding = self._session.io_binding()
        if self._on_gpu:
            dev, dev_id = "cuda", self._device_id
            self._in_ov = ort.OrtValue.ortvalue_from_shape_and_type(
                in_shape, np.float32, dev, dev_id
            )
            self._out_ov = ort.OrtValue.ortvalue_from_shape_and_type(
                out_shape, np.float32, dev, dev_id
            )
            self._in_host = np.zeros(in_shape, np.float32)
            self._out_host = np.zeros(self.action_size, np.float32)
        else:
            # onnxruntime reads and writes these numpy buffers in place: no copies.
            self._in_host = np.zeros(in_shape, np.float32)
            self._out_host = np.zeros(out_shape, np.float32).reshape(-1)
            self._in_ov = ort.OrtValue.ortvalue_from_numpy(self._in_host)
            self._out_ov = ort.OrtValue.ortvalue_from_numpy(self._out_host.reshape(out_shape))
        self._in_flat = self._in_host.reshape(-1)
        self._binding.bind_ortvalue_input(self.input_name, self._in_ov)
        self._binding.bind_ortvalue_output(self.output_name, self._out_ov)

    @property
    def provider(self) -> str:
        """The provider actually running the graph (first in the session's list)."""
        return self.providers[0]

    def run(self, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run one batch of observations; returns the action array."""
        try:
            out = self._session.run([self.output_name], {self.input_name: obs})
        except Exception as exc:
            raise SessionError(f"inference failed: {exc}") from exc
        return np.asarray(out[0], dtype=np.float32)

    def step(self, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One observation vector in, one action vector out (a reused buffer)."""
        try:
            np.copyto(self._in_flat, obs)
            if self._on_gpu:
                self._in_ov.update_inplace(self._in_host)
                self._session.run_with_iobinding(self._binding)
                self._out_host[:] = self._out_ov.numpy().reshape(-1)
            else:
                self._session.run_with_iobinding(self._binding)
        except Exception as exc:
            raise SessionError(f"inference failed: {exc}") from exc
        return self._out_host

    def warm_up(self, runs: int = 10) -> float:
        """Run `runs` zero observations (first runs allocate and, on TensorRT, build);
        returns the wall time in ms."""
        t0 = time.perf_counter()
        for _ in range(runs):
            self.step(np.zeros(self.obs_size, np.float32))
        return (time.perf_counter() - t0) * 1e3
