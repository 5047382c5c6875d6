"""Pure format pieces: DSSE PAE and envelopes, the OMS statement, the ONNX metadata reader,
version ordering. Checked against spec vectors and against the `onnx` package."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos.dsse import Envelope, EnvelopeFormatError, b64decode_any
from runtime.bundle._oms import (
    OmsFormatError,
    build_statement,
    parse_sigstore_bundle,
    parse_statement,
    root_digest,
)
from runtime.bundle._onnxwire import OnnxWireError, read_onnx_info
from runtime.bundle.compat import version_tuple

# --------------------------------------------------------------------- DSSE


def test_base64_standard_and_url_safe_both_decode() -> None:
    raw = bytes(range(250, 256)) * 3
    assert b64decode_any(base64.b64encode(raw).decode(), "x") == raw
    assert b64decode_any(base64.urlsafe_b64encode(raw).decode().rstrip("="), "x") == raw
    with pytest.raises(EnvelopeFormatError, match="not valid base64"):
        b64decode_any("abc$", "x")


@pytest.mark.parametrize(
    ("envelope", "fragment"),
    [
        ({"payloadType": "t", "payload": "aGk=", "signatures": []}, "non-empty list"),
        ({"payload": "aGk=", "signatures": [{"sig": "aGk="}]}, "payloadType"),
        ({"payloadType": "t", "payload": "", "signatures": [{"sig": "aGk="}]}, "payload must"),
        ({"payloadType": "t", "payload": "aGk=", "signatures": [{"sig": 5}]}, "sig must"),
        ({"payloadType": "t", "payload": "aGk=", "signatures": ["x"]}, "must be a JSON object"),
    ],
)
def test_malformed_envelopes_are_refused(envelope: dict[str, object], fragment: str) -> None:
    with pytest.raises(EnvelopeFormatError, match=fragment):
        Envelope.from_json_obj(envelope)


# --------------------------------------------------------------------- OMS statement


def _digests() -> dict[str, str]:
    return {
        "policy.onnx": hashlib.sha256(b"p").hexdigest(),
        "edgeflux.json": hashlib.sha256(b"m").hexdigest(),
    }


def test_statement_round_trips_and_root_digest_is_over_sorted_raw_digests() -> None:
    d = _digests()
    signed = parse_statement(build_statement("b", d))
    assert signed.resources == d
    expected = hashlib.sha256(
        bytes.fromhex(d["edgeflux.json"]) + bytes.fromhex(d["policy.onnx"])
    ).hexdigest()
    assert signed.root_digest == root_digest(d) == expected


def test_statement_lists_resources_sorted_with_serialization_block() -> None:
    statement = json.loads(build_statement("b", _digests()))
    assert [r["name"] for r in statement["predicate"]["resources"]] == [
        "edgeflux.json",
        "policy.onnx",
    ]
    serialization = statement["predicate"]["serialization"]
    assert serialization["method"] == "files" and serialization["hash_type"] == "sha256"
    assert "model.sig" in serialization["ignore_paths"]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (lambda s: s["subject"].append(s["subject"][0]), "exactly one subject"),
        (lambda s: s["predicate"]["serialization"].update(method="shards"), "method 'shards'"),
        (lambda s: s["predicate"]["serialization"].update(hash_type="blake2"), "blake2"),
        (lambda s: s["predicate"]["resources"].append(s["predicate"]["resources"][0]), "twice"),
        (lambda s: s["predicate"]["resources"][0].update(digest="XYZ"), "64 lowercase hex"),
        (lambda s: s["predicate"]["resources"][0].update(name="/etc/passwd"), "plain relative"),
        (lambda s: s["predicate"]["resources"][0].update(name="model.sig"), "signature file"),
        (lambda s: s["predicate"].update(resources=[]), "at least one file"),
    ],
    ids=["type", "subjects", "method", "hash", "dup", "digest", "abs", "self", "empty"],
)
def test_statement_shape_errors(edit, fragment: str) -> None:  # type: ignore[no-untyped-def]
    statement = json.loads(build_statement("b", _digests()))
    edit(statement)
    with pytest.raises(OmsFormatError, match=fragment):
        parse_statement(json.dumps(statement).encode())


def test_duplicate_json_keys_are_refused() -> None:
    raw = b'{"mediaType": "a", "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'
    with pytest.raises(OmsFormatError, match="duplicate JSON key 'mediaType'"):
        parse_sigstore_bundle(raw)


def test_deeply_nested_signature_file_is_a_format_error() -> None:
    with pytest.raises(OmsFormatError, match=r"nested too deeply|not JSON"):
        parse_sigstore_bundle(b"[" * 5000 + b"]" * 5000)


# --------------------------------------------------------------------- ONNX metadata reader


def _model_with_subgraph_custom_op() -> onnx.ModelProto:
    then_graph = helper.make_graph(
        [helper.make_node("Secret", ["x"], ["y"], domain="com.hidden")],
        "then",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "else",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        initializer=[cond],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.hidden", 1)],
    )


def test_reader_finds_custom_ops_inside_subgraphs() -> None:
    info = read_onnx_info(io.BytesIO(_model_with_subgraph_custom_op().SerializeToString()))
    assert ("com.hidden", "Secret") in info.ops
    assert ("", "If") in info.ops and ("", "Identity") in info.ops
    assert info.opsets == {"ai.onnx": 17, "com.hidden": 1}


def test_reader_agrees_with_the_onnx_package_on_io() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [3])
    w = numpy_helper.from_array(np.ones((4, 2), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["y"])], "g", [x], [y], initializer=[w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    info = read_onnx_info(io.BytesIO(model.SerializeToString()))
    assert [(i.name, i.dtype, i.shape) for i in info.inputs] == [("x", "float16", ["n", 4, 2])]
    assert [(o.name, o.dtype, o.shape) for o in info.outputs] == [("y", "int64", [3])]
    assert info.initializer_names == {"w"}
    assert info.ir_version == model.ir_version


def test_reader_records_external_data_locations() -> None:
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../w.bin"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[w],
    )
    info = read_onnx_info(io.BytesIO(helper.make_model(graph).SerializeToString()))
    assert [(e.tensor, e.location, e.offset, e.length, e.nbytes) for e in info.external] == [
        ("w", "../w.bin", 0, None, 16)
    ]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty file"),
        (b"\x3a\xff\xff\xff\xff\x0f", "runs past"),  # graph field claiming 4 GiB
        (b"\x08\x07", "no graph"),
        (b"\x0b", "wire type 3"),
        (b"\xff" * 11, "longer than 10 bytes|end of file"),
    ],
    ids=["empty", "huge-length", "no-graph", "group", "varint"],
)
def test_reader_refuses_malformed_protobuf(data: bytes, fragment: str) -> None:
    with pytest.raises(OnnxWireError, match=fragment):
        read_onnx_info(io.BytesIO(data))


def test_reader_bounds_subgraph_nesting() -> None:
    inner = helper.make_graph([], "leaf", [], [])
    for depth in range(26):
        node = helper.make_node("If", ["c"], [f"o{depth}"], then_branch=inner)
        inner = helper.make_graph([node], f"g{depth}", [], [])
    model = helper.make_model(inner)
    with pytest.raises(OnnxWireError, match="nested deeper"):
        read_onnx_info(io.BytesIO(model.SerializeToString()))


# --------------------------------------------------------------------- versions


def test_version_order_puts_pre_releases_below_releases() -> None:
    assert version_tuple("0.1.0.dev3") < version_tuple("0.1.0") < version_tuple("0.1.1")
    assert version_tuple("1.0.0-rc.1") < version_tuple("1.0.0") == version_tuple("1.0.0+build")
    with pytest.raises(ValueError, match=r"not a MAJOR\.MINOR\.PATCH"):
        version_tuple("latest")


def test_reader_checks_operators_of_training_graphs_too() -> None:
    hidden = helper.make_graph(
        [helper.make_node("Backdoor", [], ["q"], domain="com.hidden")], "init", [], []
    )
    model = _model_with_subgraph_custom_op()
    training = model.training_info.add()
    training.initialization.CopyFrom(hidden)
    info = read_onnx_info(io.BytesIO(model.SerializeToString()))
    assert ("com.hidden", "Backdoor") in info.ops


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    length, prefix = len(payload), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([(number << 3) | 2]) + bytes(prefix) + payload


def test_reader_refuses_a_repeated_shape_that_protobuf_would_merge() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    # ValueInfo x with its `type` field twice: protobuf merges them into dims [1, 3, 1, 3].
    vi = x.SerializeToString() + _field(2, x.type.SerializeToString())
    merged = onnx.ValueInfoProto()
    merged.ParseFromString(vi)
    assert len(merged.type.tensor_type.shape.dim) == 4
    body = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [], [y])
    model_bytes = _field(7, body.SerializeToString() + _field(11, vi))  # ModelProto.graph
    with pytest.raises(OnnxWireError, match="repeats its type field"):
        read_onnx_info(io.BytesIO(model_bytes))
