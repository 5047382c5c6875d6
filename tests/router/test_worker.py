"""AgentService workers: the policy worker runs a real ONNX policy; workers push back
when full and refuse bad observations — over a real gRPC server on a free port."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloud.router.worker import AgentServicer, policy_model, serve_agent
from protos import router_pb2, router_pb2_grpc
from tests.runtime.conftest import manifest

W = np.array([[0.5], [-0.25], [1.0]], dtype=np.float32)


def _tiny_policy(path: Path) -> Path:
    """action = tanh(obs · W): a 3 → 1 policy, enough to prove the ONNX path."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["action"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    (path.parent / "edgeflux.json").write_text(manifest().to_json())
    return path


async def _call(
    servicer: AgentServicer, obs: list[float], n: int = 1
) -> list[router_pb2.ExecuteResponse]:
    import grpc

    server, port = await serve_agent(servicer)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = router_pb2_grpc.AgentServiceStub(ch)
            req = router_pb2.ExecuteRequest(
                task=router_pb2.Task(task_type="offload", observation=obs)
            )
            return list(await asyncio.gather(*(stub.Execute(req, timeout=10) for _ in range(n))))
    finally:
        await server.stop(0)


def test_the_policy_worker_runs_the_onnx_policy(tmp_path: Path) -> None:
    model = policy_model(_tiny_policy(tmp_path / "policy.onnx"))
    obs = [0.2, 0.4, -0.1]
    (resp,) = asyncio.run(_call(AgentServicer("policy", model), obs))
    assert not resp.error and not resp.overloaded
    expected = float(np.tanh(np.array(obs, dtype=np.float32) @ W)[0])
    assert resp.action[0] == pytest.approx(expected, abs=1e-6)
    assert resp.gpu_seconds > 0


def test_a_full_worker_pushes_back_instead_of_queueing() -> None:
    gate = threading.Event()

    def slow(obs: object) -> list[float]:
        gate.wait(10)
        return [0.0]

    servicer = AgentServicer("policy", slow, max_concurrency=1)

    async def release_when_all_arrived() -> None:
        for _ in range(1000):  # the first call holds the only slot until all 3 came
            if servicer.calls >= 3:
                break
            await asyncio.sleep(0.01)
        gate.set()

    async def main() -> list[router_pb2.ExecuteResponse]:
        releaser = asyncio.create_task(release_when_all_arrived())
        out = await _call(servicer, [0.0, 0.0, 0.0], n=3)
        await releaser
        return out

    responses = asyncio.run(main())
    assert sum(r.overloaded for r in responses) == 2
    assert sum(not r.overloaded and not r.error for r in responses) == 1


def test_a_bad_observation_or_a_failing_model_is_an_error_answer() -> None:
    def boom(obs: object) -> list[float]:
        raise ValueError("needs 3 values")

    (resp,) = asyncio.run(_call(AgentServicer("policy", boom), [0.0]))
    assert "needs 3 values" in resp.error
    (resp,) = asyncio.run(_call(AgentServicer("policy", boom), [float("nan")]))
    assert "NaN" in resp.error
