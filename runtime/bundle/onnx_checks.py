"""Checks on `policy.onnx` that need no ONNX runtime and constant memory.

* external data: only relative locations naming a regular file of the bundle
  itself (never absolute, ``..``, or a symlink); `create_bundle` refuses any,
  since a bundle's policy is one file;
* operators: only the standard domains, plus the custom ``domain:OpType`` (or
  ``domain:*``) entries the device allows, plus model-local functions;
* I/O: the graph's inputs and outputs equal the manifest's I/O spec (names,
  dtypes, shapes) and the declared opset is the graph's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath

from runtime.bundle._onnxwire import GraphIO, OnnxInfo, OnnxWireError, read_onnx_info
from runtime.bundle.errors import BundleOnnxError
from runtime.manifest import BundleManifest, TensorSpec

__all__ = [
    "STANDARD_DOMAINS",
    "check_external_data",
    "check_io_matches",
    "check_operators",
    "io_spec_from_onnx",
    "read_info",
]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_SPEC_DTYPES = frozenset({"float32", "float16", "float64", "int64", "int32", "bool"})


def read_info(onnx_path: str | Path) -> OnnxInfo:
    """Parse the checkable metadata of an ONNX file (streamed; tensors are skipped)."""
    path = Path(onnx_path)
    try:
        with path.open("rb") as fh:
            return read_onnx_info(fh)
    except FileNotFoundError:
        raise BundleOnnxError(f"{path}: no such ONNX file") from None
    except OnnxWireError as exc:
        raise BundleOnnxError(f"{path}: not a valid ONNX model ({exc})") from exc
    except OSError as exc:
        raise BundleOnnxError(f"{path}: cannot read ({exc.strerror})") from exc


def _to_spec(path: Path, kind: str, io: GraphIO) -> TensorSpec:
    if io.dtype not in _SPEC_DTYPES:
        raise BundleOnnxError(
            f"{path}: graph {kind} {io.name!r} has dtype {io.dtype}; "
            f"bundles support {sorted(_SPEC_DTYPES)}"
        )
    if io.shape is None:
        raise BundleOnnxError(
            f"{path}: graph {kind} {io.name!r} declares no shape; re-export with shapes "
            "or give the I/O spec explicitly"
        )
    return TensorSpec(name=io.name, shape=list(io.shape), dtype=io.dtype)


def graph_inputs(info: OnnxInfo) -> list[GraphIO]:
    # Before IR v4 initializers were listed among the inputs too; they are not fed.
    return [i for i in info.inputs if i.name not in info.initializer_names]


def io_spec_from_onnx(onnx_path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's (inputs, outputs) as manifest TensorSpecs; -1 or a name marks a dynamic dim."""
    path = Path(onnx_path)
    info = read_info(path)
    inputs = [_to_spec(path, "input", i) for i in graph_inputs(info)]
    outputs = [_to_spec(path, "output", o) for o in info.outputs]
    if not inputs or not outputs:
        raise BundleOnnxError(f"{path}: the graph has no inputs or no outputs")
    return inputs, outputs


def check_external_data(
    info: OnnxInfo, onnx_path: Path, bundle_files: Collection[str] | None
) -> None:
    """Refuse external data that could reach outside the bundle.

    `bundle_files` is the signed file set (names relative to the bundle); None means
    no external data is acceptable at all (bundle creation).
    """
    for tensor, location in info.external_locations:
        where = f"{onnx_path}: tensor {tensor!r} keeps its data in external file {location!r}"
        loc = PurePosixPath(location.replace("\\", "/"))
        if (
            not location
            or location.startswith(("/", "\\"))
            or loc.is_absolute()
            or (len(location) > 1 and location[1] == ":")
        ):
            raise BundleOnnxError(f"{where}: absolute or empty locations are refused")
        if ".." in loc.parts:
            raise BundleOnnxError(f"{where}: locations with '..' are refused")
        candidate = onnx_path.parent / loc
        if candidate.is_symlink():
            raise BundleOnnxError(f"{where}: the location is a symlink, refused")
        if bundle_files is None:
            raise BundleOnnxError(
                f"{where}: bundles hold a single-file policy; export with external_data=False"
            )
        rel = PurePosixPath(onnx_path.name).parent / loc
        if rel.as_posix() not in bundle_files:
            raise BundleOnnxError(f"{where}: that file is not part of the signed bundle")


def _allowed(domain: str, op: str, allow: Collection[str]) -> bool:
    return domain in STANDARD_DOMAINS or f"{domain}:{op}" in allow or f"{domain}:*" in allow


def check_operators(info: OnnxInfo, onnx_path: Path, allowed_custom_ops: Collection[str]) -> None:
    """Every node is a standard op, an allowed custom op, or a call to a model-local function."""
    bad = sorted(
        f"{d}:{op}"
        for d, op in info.ops
        if not _allowed(d, op, allowed_custom_ops) and (d, op) not in info.function_ids
    )
    if bad:
        raise BundleOnnxError(
            f"{onnx_path}: custom-domain operators {bad} are not on this device's allow list "
            f"({sorted(allowed_custom_ops) or 'empty'})"
        )


def _dim_ok(declared: int | str, graph: int | str) -> bool:
    declared_dynamic = isinstance(declared, str) or declared < 0
    graph_dynamic = isinstance(graph, str) or graph < 0
    if declared_dynamic:
        return graph_dynamic
    return graph_dynamic or declared == graph


def _compare(
    onnx_path: Path, kind: str, declared: Sequence[TensorSpec], actual: Sequence[GraphIO]
) -> None:
    dnames = [t.name for t in declared]
    anames = [t.name for t in actual]
    if sorted(dnames) != sorted(anames):
        raise BundleOnnxError(
            f"{onnx_path}: manifest io.{kind} names {dnames} but the graph's {kind} are {anames}"
        )
    by_name = {t.name: t for t in actual}
    for spec in declared:
        graph = by_name[spec.name]
        if spec.dtype != graph.dtype:
            raise BundleOnnxError(
                f"{onnx_path}: {kind[:-1]} {spec.name!r} is {graph.dtype} in the graph, "
                f"the manifest says {spec.dtype}"
            )
        if graph.shape is None:
            continue  # the graph leaves the shape open; the manifest narrows it
        if len(spec.shape) != len(graph.shape) or not all(
            _dim_ok(d, g) for d, g in zip(spec.shape, graph.shape, strict=True)
        ):
            raise BundleOnnxError(
                f"{onnx_path}: {kind[:-1]} {spec.name!r} has shape {graph.shape} in the graph, "
                f"the manifest says {spec.shape}"
            )


def check_io_matches(info: OnnxInfo, onnx_path: Path, manifest: BundleManifest) -> None:
    """The manifest's I/O spec and opset say what the graph really is."""
    _compare(onnx_path, "inputs", manifest.io.inputs, graph_inputs(info))
    _compare(onnx_path, "outputs", manifest.io.outputs, info.outputs)
    for kind, specs, dim in (
        ("inputs", manifest.io.inputs, manifest.io.obs_dim),
        ("outputs", manifest.io.outputs, manifest.io.action_dim),
    ):
        # One flat vector in, one out: its last fixed dim is the bounds' length.
        if len(specs) == 1 and specs[0].shape:
            last = specs[0].shape[-1]
            if isinstance(last, int) and last >= 0 and last != dim:
                bounds = "obs_low/obs_high" if kind == "inputs" else "action_low/action_high"
                raise BundleOnnxError(
                    f"{onnx_path}: {kind[:-1]} {specs[0].name!r} has {last} elements per row "
                    f"but io.{bounds} have {dim}"
                )
    graph_opset = info.opsets.get("ai.onnx")
    if graph_opset is not None and graph_opset != manifest.compatibility.opset:
        raise BundleOnnxError(
            f"{onnx_path}: the graph imports ai.onnx opset {graph_opset}, "
            f"the manifest's compatibility.opset says {manifest.compatibility.opset}"
        )
