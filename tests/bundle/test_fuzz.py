"""Property tests: arbitrary bytes in the untrusted parsers raise only their own error
types (never an unexpected exception, hang or crash)."""

from __future__ import annotations

import contextlib
import io

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.bundle._oms import OmsFormatError, parse_sigstore_bundle
from runtime.bundle._onnxwire import OnnxWireError, read_onnx_info
from tests.bundle.conftest import make_policy

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=512))
def test_onnx_reader_on_random_bytes_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(OnnxWireError):
        read_onnx_info(io.BytesIO(data))


def _policy_bytes() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return make_policy(Path(tmp) / "p.onnx").read_bytes()


POLICY = _policy_bytes()


@FAST
@given(st.integers(0, len(POLICY) - 1), st.integers(0, 255), st.integers(1, len(POLICY)))
def test_onnx_reader_on_mutated_policy_agrees_with_onnx_or_refuses(
    offset: int, value: int, cut: int
) -> None:
    data = bytearray(POLICY[:cut])
    if offset < len(data):
        data[offset] = value
    try:
        info = read_onnx_info(io.BytesIO(bytes(data)))
    except OnnxWireError:
        return
    # Whenever we accept the bytes, the real protobuf parser does too and sees the
    # same inputs and operators (no parser differential to hide a graph behind).
    model = onnx.ModelProto()
    model.ParseFromString(bytes(data))
    assert [i.name for i in info.inputs] == [i.name for i in model.graph.input]
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert ops <= info.ops


@FAST
@given(st.binary(max_size=512) | st.text(max_size=256).map(str.encode))
def test_signature_parser_on_random_bytes_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(OmsFormatError):
        parse_sigstore_bundle(data)
