"""The demo's deliberately broken policy: properly signed, but every action is NaN."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_nan_policy"]


def write_nan_policy(path: Path, obs_dim: int, act_dim: int, opset: int) -> Path:
    """An ONNX graph with the student's I/O names that ignores its input and outputs NaN."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "w"], ["m"]),
            helper.make_node("Add", ["m", "nan"], ["action"]),
        ],
        "broken_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim])],
        initializer=[
            numpy_helper.from_array(np.zeros((obs_dim, act_dim), np.float32), "w"),
            numpy_helper.from_array(np.full(act_dim, np.nan, np.float32), "nan"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
