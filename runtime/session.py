"""The only module that imports onnxruntime: an inference session over one ONNX policy.

Execution providers are tried in the order TensorRT → CUDA → CPU, limited to what
the caller allows and what this onnxruntime build offers. onnxruntime-gpu falls
back to CPU *silently* when CUDA libraries are missing, so the providers actually
in use are read back from the session (`PolicySession.providers`) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = ["DEFAULT_PROVIDER_ORDER", "PolicySession", "SessionError", "available_providers"]

log = logging.getLogger(__name__)

DEFAULT_PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


class SessionError(RuntimeError):
    """The policy could not be loaded or run."""


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (not proof that they work)."""
    return list(ort.get_available_providers())


class PolicySession:
    """One ONNX policy with a single float input (observation) and output (action)."""

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        allowed_providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        wanted = [
            p
            for p in DEFAULT_PROVIDER_ORDER
            if (allowed_providers is None or p in allowed_providers) and p in available_providers()
        ]
        if not wanted:
            raise SessionError(
                f"no usable execution provider: allowed {list(allowed_providers or [])}, "
                f"available {available_providers()}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        try:
            self._session = ort.InferenceSession(source, sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            label = "<bytes>" if isinstance(model, bytes) else str(model)
            raise SessionError(f"onnxruntime could not load {label}: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        if wanted[0] != self.providers[0]:
            log.warning(
                "execution provider fell back",
                extra={"wanted": wanted[0], "using": self.providers[0]},
            )
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        self.output_shape: list[int | str | None] = list(outputs[0].shape)

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
