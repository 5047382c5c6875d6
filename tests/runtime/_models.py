"""Small ONNX policies built with `onnx.helper` (no torch): MLPs and deliberately bad ones."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], obs: int, act: int) -> bytes:
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp(
    obs: int = 3,
    act: int = 1,
    hidden: tuple[int, ...] = (16,),
    seed: int = 0,
    scale: float = 0.5,
    bias: float = 0.0,
) -> bytes:
    """obs → Tanh MLP → act, with a Tanh output scaled by 2 (Pendulum's torque range)."""
    rng = np.random.default_rng(seed)
    sizes = [obs, *hidden, act]
    nodes, inits, x = [], [], "obs"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) * scale / np.sqrt(n_in)).astype(np.float32)
        b = np.full(n_out, bias if i == len(sizes) - 2 else 0.0, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Tanh", [f"a{i}"], [f"h{i}"]),
        ]
        x = f"h{i}"
    inits.append(numpy_helper.from_array(np.array([2.0], np.float32), "out_scale"))
    nodes.append(helper.make_node("Mul", [x, "out_scale"], ["action"]))
    return _model(nodes, inits, obs, act)


def constant(obs: int, values: list[float]) -> bytes:
    """Ignores the observation and outputs `values` (NaN / Inf allowed)."""
    act = len(values)
    w = np.zeros((obs, act), np.float32)
    b = np.asarray(values, np.float32)
    nodes = [
        helper.make_node("MatMul", ["obs", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["action"]),
    ]
    return _model(
        nodes, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")], obs, act
    )


def fails_when_first_obs_above(obs: int, act: int, threshold: float) -> bytes:
    """Raises inside onnxruntime (Gather index out of range) when obs[0] > threshold."""
    table = np.zeros((1, act), np.float32)
    nodes = [
        helper.make_node("Slice", ["obs", "s0", "s1", "ax"], ["first"]),  # [batch, 1]
        helper.make_node("Sub", ["first", "thr"], ["shifted"]),
        helper.make_node("Ceil", ["shifted"], ["up"]),
        helper.make_node("Relu", ["up"], ["idx_f"]),  # 0 when obs[0] <= thr, else >= 1
        helper.make_node("Cast", ["idx_f"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["idx", "flat"], ["idx1"]),
        helper.make_node("Gather", ["table", "idx1"], ["action"], axis=0),
    ]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.array([threshold], np.float32), "thr"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
    ]
    return _model(nodes, inits, obs, act)
