"""Checks on `policy.onnx` that need no ONNX runtime and constant memory.

* external data: only relative locations naming a regular, signed file of the
  bundle itself (never absolute, ``..``, or a symlink), each tensor's byte range
  inside that file and exactly as long as its dtype and dims need;
* operators: only the standard domains, plus the custom ``domain:OpType`` (or
  ``domain:*``) entries the device allows, plus model-local functions;
* I/O: the graph's inputs and outputs equal the manifest's I/O spec (names,
  dtypes, shapes) and the declared opset is the graph's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path, PurePosixPath

from runtime.bundle._onnxwire import GraphIO, OnnxInfo, OnnxWireError, read_onnx_info
from runtime.bundle.errors import BundleOnnxError
from runtime.manifest import MANIFEST_NAME, BundleManifest, TensorSpec

__all__ = [
    "STANDARD_DOMAINS",
    "check_external_data",
    "check_io_matches",
    "check_operators",
    "external_files",
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


_RESERVED = frozenset({"policy.onnx", MANIFEST_NAME, "model.sig"})


def external_files(info: OnnxInfo, onnx_path: Path) -> list[str]:
    """The files (relative to the model's directory) its external data names, checked.

    Each location must be relative, inside the model's directory (no ``..``, no
    backslash, no symlink on the way) and not one of the bundle's own files.
    """
    names: list[str] = []
    for ref in info.external:
        where = (
            f"{onnx_path}: tensor {ref.tensor!r} keeps its data in external file {ref.location!r}"
        )
        location = ref.location
        loc = PurePosixPath(location)
        if not location or location.startswith("/") or (len(location) > 1 and location[1] == ":"):
            raise BundleOnnxError(f"{where}: absolute or empty locations are refused")
        if "\\" in location or "\x00" in location:
            raise BundleOnnxError(f"{where}: backslashes and NUL bytes are refused in locations")
        if ".." in loc.parts:
            raise BundleOnnxError(f"{where}: locations with '..' are refused")
        for depth in range(1, len(loc.parts) + 1):
            if (onnx_path.parent / PurePosixPath(*loc.parts[:depth])).is_symlink():
                raise BundleOnnxError(f"{where}: the location is a symlink, refused")
        rel = loc.as_posix()
        if rel in _RESERVED:
            raise BundleOnnxError(f"{where}: that is one of the bundle's own files")
        if rel not in names:
            names.append(rel)
    return names


def check_external_data(info: OnnxInfo, onnx_path: Path, bundle_files: Mapping[str, int]) -> None:
    """Refuse external data that reaches outside the bundle or past its files.

    `bundle_files` maps each signed file (relative to the bundle) to its size in
    bytes. Every tensor's (offset, length) must lie inside its file, and the length
    must be what the tensor's dtype and dims need.
    """
    external_files(info, onnx_path)
    for ref in info.external:
        rel = PurePosixPath(ref.location).as_posix()
        where = f"{onnx_path}: tensor {ref.tensor!r} keeps its data in external file {rel!r}"
        size = bundle_files.get(rel)
        if size is None:
            raise BundleOnnxError(f"{where}: that file is not part of the signed bundle")
        if ref.nbytes is None:
            raise BundleOnnxError(f"{where}: only fixed-size tensors may be stored externally")
        length = ref.length if ref.length is not None else size - ref.offset
        if ref.offset > size or ref.offset + length > size:
            raise BundleOnnxError(
                f"{where}: bytes {ref.offset}..{ref.offset + length} run past the file's "
                f"{size} bytes"
            )
        if length != ref.nbytes:
            raise BundleOnnxError(
                f"{where}: {length} bytes are stored, its dtype and dims need {ref.nbytes}"
            )


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
