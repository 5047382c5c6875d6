"""A streaming reader for the parts of an ONNX ModelProto the robot must check.

Why not `onnx.load`: it materialises every initializer, so checking a 100 MB
policy would cost 100+ MB of memory before the first byte runs, and the robot
would need the `onnx` package. Instead we walk the protobuf wire format
(https://protobuf.dev/programming-guides/encoding/) from the file and *seek past*
tensor payloads, collecting only: opset imports, graph inputs/outputs (name,
dtype, shape), initializer names, every node's (domain, op_type) including nested
subgraphs and local functions, and every tensor's external-data location.
Memory stays bounded by the size of that metadata, not by the file size.

Field numbers are those of onnx/onnx.proto (IR version 10).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = ["ExternalRef", "GraphIO", "OnnxInfo", "OnnxWireError", "read_onnx_info"]

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_MAX_STRING = 1 << 20  # names, domains, locations: a megabyte is already absurd
_MAX_DEPTH = 24  # nested subgraphs; bounds recursion on hostile input
_MAX_ITEMS = 1_000_000  # nodes + tensors + values in total

# TensorProto.DataType -> our TensorSpec dtype names (None: not representable).
ELEM_TYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}


# Bits per element of each fixed-size TensorProto.DataType (strings have no fixed size).
_ELEM_BITS: dict[int, int] = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
    14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4,
}  # fmt: skip


class OnnxWireError(ValueError):
    """The file is not a well-formed ONNX protobuf (or exceeds the reader's limits)."""


@dataclass(frozen=True)
class GraphIO:
    name: str
    dtype: str
    shape: list[int | str] | None
    """None when the graph declares no shape; -1 for an unknown dimension."""


@dataclass(frozen=True)
class ExternalRef:
    """One tensor whose bytes live in another file (TensorProto.external_data)."""

    tensor: str
    location: str
    """As written in the model ("" when the tensor is external but names no file)."""
    offset: int
    """Where the tensor's bytes start in `location` (0 when not given)."""
    length: int | None
    """How many bytes it claims (None: up to the end of the file)."""
    nbytes: int | None
    """How many bytes its dtype and dims need (None: not fixed-size, e.g. strings)."""


@dataclass
class OnnxInfo:
    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    inputs: list[GraphIO] = field(default_factory=list)
    outputs: list[GraphIO] = field(default_factory=list)
    initializer_names: set[str] = field(default_factory=set)
    ops: set[tuple[str, str]] = field(default_factory=set)
    """(domain, op_type) of every node: main graph, subgraphs, functions, training graphs."""
    function_ids: set[tuple[str, str]] = field(default_factory=set)
    """(domain, name) of model-local functions (they may be called as ops)."""
    external: list[ExternalRef] = field(default_factory=list)
    """Every tensor whose data lives outside the file."""
    has_graph: bool = False


class _Reader:
    """Buffered access to a protobuf stream with absolute offsets and cheap skips."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        self.items = 0

    def tell(self) -> int:
        return self.fh.tell()

    def byte(self) -> int:
        b = self.fh.read(1)
        if not b:
            raise OnnxWireError("unexpected end of file inside a field")
        return b[0]

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift >= 70:
                raise OnnxWireError("varint longer than 10 bytes")

    def key(self) -> tuple[int, int]:
        k = self.varint()
        number, wire = k >> 3, k & 7
        if number == 0:
            raise OnnxWireError("field number 0")
        return number, wire

    def length(self, end: int) -> int:
        n = self.varint()
        if self.tell() + n > end:
            raise OnnxWireError(
                f"length-delimited field of {n} bytes runs past its message at {self.tell()}"
            )
        return n

    def skip(self, wire: int, end: int) -> None:
        if wire == _VARINT:
            self.varint()
        elif wire == _I64:
            self._seek_rel(8, end)
        elif wire == _I32:
            self._seek_rel(4, end)
        elif wire == _LEN:
            self._seek_rel(self.length(end), end)
        else:
            raise OnnxWireError(f"unsupported wire type {wire} (groups are not used by ONNX)")

    def _seek_rel(self, n: int, end: int) -> None:
        target = self.tell() + n
        if target > end:
            raise OnnxWireError("field runs past the end of its message")
        self.fh.seek(target)

    def string(self, end: int) -> str:
        n = self.length(end)
        if n > _MAX_STRING:
            raise OnnxWireError(f"string field of {n} bytes exceeds {_MAX_STRING}")
        data = self.fh.read(n)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise OnnxWireError(f"string field is not UTF-8 at offset {self.tell() - n}") from exc

    def sub_end(self, end: int) -> int:
        n = self.length(end)
        return self.tell() + n

    def count(self) -> None:
        self.items += 1
        if self.items > _MAX_ITEMS:
            raise OnnxWireError(f"more than {_MAX_ITEMS} graph elements")


def _loop(r: _Reader, end: int) -> Iterator[tuple[int, int]]:
    while r.tell() < end:
        yield r.key()
    if r.tell() != end:
        raise OnnxWireError("message ends inside a field")


def _opset(r: _Reader, end: int) -> tuple[str, int]:
    domain, version = "", 0
    for number, wire in _loop(r, end):
        if number == 1 and wire == _LEN:
            domain = r.string(end)
        elif number == 2 and wire == _VARINT:
            version = r.varint()
        else:
            r.skip(wire, end)
    return domain, version


def _decimal(tensor: str, key: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise OnnxWireError(
            f"tensor {tensor!r}: external_data {key} {value!r} is not a non-negative integer"
        )
    return int(value)


def _dims(r: _Reader, wire: int, end: int, dims: list[int]) -> None:
    if wire == _VARINT:
        dims.append(r.varint())
    elif wire == _LEN:
        p_end = r.sub_end(end)
        while r.tell() < p_end:
            dims.append(r.varint())
        if r.tell() != p_end:
            raise OnnxWireError("packed dims end inside a varint")
    else:
        r.skip(wire, end)
    if len(dims) > 64:
        raise OnnxWireError("tensor with more than 64 dimensions")


def _nbytes(data_type: int, dims: list[int]) -> int | None:
    bits = _ELEM_BITS.get(data_type)
    if bits is None:
        return None
    count = 1
    for d in dims:
        if d >= 1 << 63:  # a negative int64: no valid tensor has it
            return None
        count *= d
    return (count * bits + 7) // 8


def _tensor(r: _Reader, end: int, info: OnnxInfo, names: set[str] | None) -> None:
    """TensorProto: dims (1), data_type (2), name (8), external_data (13: key 1 / value 2),
    data_location (14)."""
    r.count()
    name = ""
    entries: dict[str, str] = {}
    external = False
    dims: list[int] = []
    data_type = 0
    for number, wire in _loop(r, end):
        if number == 1:
            _dims(r, wire, end, dims)
        elif number == 2 and wire == _VARINT:
            data_type = r.varint()
        elif number == 8 and wire == _LEN:
            name = r.string(end)
        elif number == 13 and wire == _LEN:
            e = r.sub_end(end)
            key = value = ""
            for n2, w2 in _loop(r, e):
                if n2 == 1 and w2 == _LEN:
                    key = r.string(e)
                elif n2 == 2 and w2 == _LEN:
                    value = r.string(e)
                else:
                    r.skip(w2, e)
            if key in entries:
                # Readers disagree on which copy wins; refuse rather than guess.
                raise OnnxWireError(f"tensor {name or '?'!r} repeats external_data key {key!r}")
            entries[key] = value
        elif number == 14 and wire == _VARINT:
            external = r.varint() == 1  # DataLocation.EXTERNAL
        else:
            r.skip(wire, end)  # raw_data (9) and the typed data arrays are skipped here
    if names is not None:
        names.add(name)
    if external or "location" in entries:
        length = entries.get("length")
        info.external.append(
            ExternalRef(
                tensor=name,
                location=entries.get("location", ""),
                offset=_decimal(name, "offset", entries["offset"]) if "offset" in entries else 0,
                length=_decimal(name, "length", length) if length is not None else None,
                nbytes=_nbytes(data_type, dims),
            )
        )


def _sparse_tensor(r: _Reader, end: int, info: OnnxInfo) -> None:
    for number, wire in _loop(r, end):
        if number in (1, 2) and wire == _LEN:
            _tensor(r, r.sub_end(end), info, None)
        else:
            r.skip(wire, end)


def _value_info(r: _Reader, end: int) -> GraphIO:
    """ValueInfoProto -> TypeProto(1: tensor_type) -> Tensor(1: elem_type, 2: shape).

    A repeated occurrence of one of these singular messages is *merged* by protobuf
    (the shape's dims would be concatenated), so a second copy is refused rather
    than read differently from the runtime that will load the model.
    """
    name, dtype, shape = "", "", None
    seen: set[str] = set()

    def once(what: str) -> None:
        if what in seen:
            raise OnnxWireError(f"value {name or '?'!r} repeats its {what} field")
        seen.add(what)

    for number, wire in _loop(r, end):
        if number == 1 and wire == _LEN:
            name = r.string(end)
        elif number == 2 and wire == _LEN:
            once("type")
            t_end = r.sub_end(end)
            for n2, w2 in _loop(r, t_end):
                if n2 == 1 and w2 == _LEN:
                    once("tensor_type")
                    tt_end = r.sub_end(t_end)
                    for n3, w3 in _loop(r, tt_end):
                        if n3 == 1 and w3 == _VARINT:
                            code = r.varint()
                            dtype = ELEM_TYPES.get(code, f"elem_type {code}")
                        elif n3 == 2 and w3 == _LEN:
                            once("shape")
                            shape = _shape(r, r.sub_end(tt_end))
                        else:
                            r.skip(w3, tt_end)
                elif n2 in (4, 5, 8, 9) and w2 == _LEN:
                    dtype = {4: "sequence", 5: "map", 8: "sparse_tensor", 9: "optional"}[n2]
                    r.skip(w2, t_end)
                else:
                    r.skip(w2, t_end)
        else:
            r.skip(wire, end)
    return GraphIO(name=name, dtype=dtype or "undefined", shape=shape)


def _shape(r: _Reader, end: int) -> list[int | str]:
    dims: list[int | str] = []
    for number, wire in _loop(r, end):
        if number == 1 and wire == _LEN:
            d_end = r.sub_end(end)
            dim: int | str = -1
            for n2, w2 in _loop(r, d_end):
                if n2 == 1 and w2 == _VARINT:
                    value = r.varint()
                    dim = value if value < (1 << 63) else value - (1 << 64)
                elif n2 == 2 and w2 == _LEN:
                    dim = r.string(d_end) or -1
                else:
                    r.skip(w2, d_end)
            dims.append(dim)
        else:
            r.skip(wire, end)
    return dims


def _attribute(r: _Reader, end: int, info: OnnxInfo, depth: int) -> None:
    """AttributeProto: t (5), g (6), tensors (10), graphs (11), sparse (22, 23)."""
    for number, wire in _loop(r, end):
        if wire != _LEN:
            r.skip(wire, end)
        elif number in (5, 10):
            _tensor(r, r.sub_end(end), info, None)
        elif number in (6, 11):
            _graph(r, r.sub_end(end), info, depth + 1, main=False)
        elif number in (22, 23):
            _sparse_tensor(r, r.sub_end(end), info)
        else:
            r.skip(wire, end)


def _node(r: _Reader, end: int, info: OnnxInfo, depth: int) -> None:
    r.count()
    op_type, domain = "", ""
    for number, wire in _loop(r, end):
        if number == 4 and wire == _LEN:
            op_type = r.string(end)
        elif number == 7 and wire == _LEN:
            domain = r.string(end)
        elif number == 5 and wire == _LEN:
            _attribute(r, r.sub_end(end), info, depth)
        else:
            r.skip(wire, end)
    info.ops.add((domain, op_type))


def _graph(r: _Reader, end: int, info: OnnxInfo, depth: int, *, main: bool) -> None:
    if depth > _MAX_DEPTH:
        raise OnnxWireError(f"subgraphs nested deeper than {_MAX_DEPTH}")
    for number, wire in _loop(r, end):
        if wire != _LEN:
            r.skip(wire, end)
        elif number == 1:
            _node(r, r.sub_end(end), info, depth)
        elif number == 5:
            _tensor(r, r.sub_end(end), info, info.initializer_names if main else None)
        elif number == 15:
            _sparse_tensor(r, r.sub_end(end), info)
        elif main and number == 11:
            r.count()
            info.inputs.append(_value_info(r, r.sub_end(end)))
        elif main and number == 12:
            r.count()
            info.outputs.append(_value_info(r, r.sub_end(end)))
        else:
            r.skip(wire, end)


def _function(r: _Reader, end: int, info: OnnxInfo) -> None:
    """FunctionProto: name (1), node (7), domain (10)."""
    name = domain = ""
    for number, wire in _loop(r, end):
        if number == 1 and wire == _LEN:
            name = r.string(end)
        elif number == 10 and wire == _LEN:
            domain = r.string(end)
        elif number == 7 and wire == _LEN:
            _node(r, r.sub_end(end), info, 1)
        else:
            r.skip(wire, end)
    info.function_ids.add((domain, name))


def read_onnx_info(fh: BinaryIO) -> OnnxInfo:
    """Read the checkable metadata of the ModelProto in `fh` (a seekable binary file)."""
    try:
        size = os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        size = _size(fh)  # in-memory streams (tests, bytes from the network)
    if size == 0:
        raise OnnxWireError("empty file")
    r = _Reader(fh, size)
    info = OnnxInfo()
    fh.seek(0)
    for number, wire in _loop(r, size):
        if number == 1 and wire == _VARINT:
            info.ir_version = r.varint()
        elif number == 8 and wire == _LEN:
            domain, version = _opset(r, r.sub_end(size))
            info.opsets[domain or "ai.onnx"] = version
        elif number == 7 and wire == _LEN:
            if info.has_graph:
                raise OnnxWireError("model has more than one graph field")
            info.has_graph = True
            _graph(r, r.sub_end(size), info, 0, main=True)
        elif number == 25 and wire == _LEN:
            _function(r, r.sub_end(size), info)
        elif number == 20 and wire == _LEN:
            # TrainingInfoProto: initialization (1) and algorithm (2) are graphs too;
            # their operators must pass the same allow list.
            t_end = r.sub_end(size)
            for n2, w2 in _loop(r, t_end):
                if n2 in (1, 2) and w2 == _LEN:
                    _graph(r, r.sub_end(t_end), info, 1, main=False)
                else:
                    r.skip(w2, t_end)
        else:
            r.skip(wire, size)
    if not info.has_graph:
        raise OnnxWireError("no graph in the model (is this an ONNX file?)")
    return info


def _size(fh: BinaryIO) -> int:
    pos = fh.tell()
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    fh.seek(pos)
    return size
