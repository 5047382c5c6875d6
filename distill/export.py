"""ONNX export of the student, graph checks, and numeric parity torch vs onnxruntime.

Export uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) with a
dynamic batch dimension (an example
batch alone would freeze it, pytorch#151582), and falls back to the legacy
TorchScript exporter if dynamo fails. The result passes
``onnx.checker.check_model(full_check=True)`` and carries the observation/action
spec and provenance in ``metadata_props``. Parity runs the ONNX graph through the
runtime's own `PolicySession` — the code path the robot uses — never through
onnxruntime directly.

A student is one self-contained ``policy.onnx`` unless its weights pass
`EXTERNAL_DATA_THRESHOLD_BYTES` (or ``external_data=True``): then they go to ONNX
external data, one ``policy.onnx.data`` file next to the graph, as a protobuf
cannot hold more than 2 GiB. :meth:`ExportResult.save` writes either form; the
bundle signs and verifies every file (``runtime.bundle.create_bundle`` copies the
external file and checks its ranges against the graph).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from distill.envs import EnvSpec
from distill.errors import ExportError
from distill.student import Student
from runtime.session import PolicySession, SessionError

__all__ = [
    "EXTERNAL_DATA_THRESHOLD_BYTES",
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "ExportResult",
    "ParityReport",
    "check_parity",
    "export_student",
    "parity_inputs",
]

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "obs", "action"
OPSET = 18  # the dynamo exporter's floor; onnxruntime >= 1.14 and TensorRT 8.6+ parse it


EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
"""Weights above this go to ONNX external data (protobuf's hard limit is 2 GiB)."""


@dataclass(frozen=True)
class ExportResult:
    model: onnx.ModelProto
    exporter: Literal["dynamo", "legacy"]
    opset: int
    external_data: bool = False
    """The weights live in ``<name>.data`` next to the graph (see :meth:`save`)."""

    @property
    def onnx_bytes(self) -> bytes:
        """The self-contained model; an external-data export has no such form."""
        if self.external_data:
            raise ExportError(
                "this student keeps its weights in ONNX external data: write it with "
                "ExportResult.save(path), not as one file's bytes"
            )
        return bytes(self.model.SerializeToString())

    def save(self, path: str | Path) -> list[Path]:
        """Write the model to `path` (``policy.onnx``) and, for an external-data export,
        its weights to ``<path>.data`` beside it; returns the files written."""
        out = Path(path)
        if not self.external_data:
            out.write_bytes(self.onnx_bytes)
            return [out]
        data = out.with_name(out.name + ".data")
        data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(
            self.model,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        # save_model moved the weights out of self.model's tensors: load them back so
        # the result can be saved again.
        onnx.load_external_data_for_model(self.model, str(out.parent))
        return [out, data]


@dataclass(frozen=True)
class ParityReport:
    """Elementwise |onnx - torch| <= atol + rtol * |torch| over `n` inputs."""

    n: int
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool
    provider: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _export_dynamo(student: Student, example: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            student,
            (example,),
            None,
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("dynamo exporter returned no program")
    model: onnx.ModelProto = program.model_proto
    return model


def _export_legacy(student: Student, example: torch.Tensor) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            student,
            (example,),
            buf,  # type: ignore[arg-type]  # the legacy exporter writes to any binary file
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )
    return onnx.load_from_string(buf.getvalue())


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def export_student(
    student: Student,
    spec: EnvSpec,
    metadata: dict[str, Any],
    *,
    prefer: Literal["dynamo", "legacy"] = "dynamo",
    external_data: bool | None = None,
) -> ExportResult:
    """Export `student` for `spec`; `metadata` values are JSON-encoded into metadata_props.

    `external_data`: True keeps the weights in ONNX external data, False in the one
    file; None (default) decides by `EXTERNAL_DATA_THRESHOLD_BYTES`."""
    student = student.eval()
    example = torch.as_tensor(
        np.stack([spec.obs_low, spec.obs_high]) * 0.5, dtype=torch.float32
    )  # batch of 2: never let an example of 1 look like a fixed batch
    order = ["dynamo", "legacy"] if prefer == "dynamo" else ["legacy"]
    errors = []
    exported: onnx.ModelProto | None = None
    used = "legacy"
    for name in order:
        try:
            exported = (_export_dynamo if name == "dynamo" else _export_legacy)(student, example)
            used = name
            break
        except Exception as exc:  # exporters raise many internal types
            log.warning("onnx exporter failed", extra={"exporter": name, "error": str(exc)})
            errors.append(f"{name}: {exc}")
    if exported is None:
        raise ExportError("every ONNX exporter failed: " + " | ".join(errors))
    model = exported
    if external_data is None:
        external_data = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
    props = {
        "edgeflux.obs_spec": {
            "name": INPUT_NAME,
            "shape": ["batch", spec.obs_dim],
            "low": spec.obs_low.tolist(),
            "high": spec.obs_high.tolist(),
        },
        "edgeflux.action_spec": {
            "name": OUTPUT_NAME,
            "shape": ["batch", spec.act_dim],
            "low": spec.act_low.tolist(),
            "high": spec.act_high.tolist(),
        },
        "edgeflux.exporter": used,
        **{f"edgeflux.{k}": v for k, v in metadata.items()},
    }
    del model.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ExportError("exported graph must have exactly one input and one output")
    result = ExportResult(model, used, OPSET, external_data)  # type: ignore[arg-type]
    try:
        if external_data:  # the checker reads a model over 2 GiB only from its files
            with tempfile.TemporaryDirectory(prefix="edgeflux-export-") as tmp:
                path = Path(tmp) / "policy.onnx"
                result.save(path)
                onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph fails onnx.checker (full_check): {exc}") from exc
    return result


def parity_inputs(
    spec: EnvSpec, states: np.ndarray | None, n_random: int = 4096, seed: int = 0
) -> np.ndarray:
    """`n_random` uniform draws inside the observation bounds, plus up to 4,096 replay states."""
    rng = np.random.default_rng(seed)
    rand = rng.uniform(spec.obs_low, spec.obs_high, size=(n_random, spec.obs_dim))
    parts = [rand.astype(np.float32)]
    if states is not None and len(states):
        take = rng.choice(len(states), size=min(4096, len(states)), replace=False)
        parts.append(np.asarray(states, dtype=np.float32)[np.sort(take)])
    return np.concatenate(parts)


def check_parity(
    student: Student,
    onnx_bytes: bytes | Path,
    inputs: np.ndarray,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> ParityReport:
    """Compare torch and the runtime's onnxruntime session on every row of `inputs`.

    `onnx_bytes`: the model's bytes, or the path of a saved one (external data beside it)."""
    with torch.inference_mode():
        ref = student.eval()(torch.as_tensor(inputs, dtype=torch.float32)).numpy()
    try:
        session = PolicySession(onnx_bytes, allowed_providers=["CPUExecutionProvider"])
        got = session.run(np.ascontiguousarray(inputs, dtype=np.float32))
    except SessionError as exc:
        raise ExportError(f"onnxruntime could not run the exported student: {exc}") from exc
    if got.shape != ref.shape:
        raise ExportError(f"onnx output shape {got.shape} != torch output shape {ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    passed = bool(np.all(diff <= atol + rtol * np.abs(ref)))
    return ParityReport(
        n=len(inputs),
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        rtol=rtol,
        atol=atol,
        passed=passed,
        provider=session.provider,
    )
