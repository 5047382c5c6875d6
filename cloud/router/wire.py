"""The router on the wire: protobuf messages to and from its plain types, and the
AgentService client that calls a backend.

`task_from_proto` validates an untrusted `Task` message and raises ValueError naming
the bad field; everything else converts trusted data.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Protocol

import grpc

from cloud.router.task import Answer, Constraints, Outcome, Qos, Result, Scope, Task
from protos import router_pb2, router_pb2_grpc

__all__ = [
    "MAX_DEADLINE_MS",
    "OUTCOME_PROTO",
    "AgentClient",
    "Executor",
    "answer_from_proto",
    "result_to_proto",
    "task_from_proto",
    "task_to_proto",
]

MAX_DEADLINE_MS = 600_000
MAX_OBSERVATION = 4096
MAX_TASK_TYPE = 64

OUTCOME_PROTO = {
    Outcome.OK: router_pb2.ROUTE_OUTCOME_OK,
    Outcome.REJECTED: router_pb2.ROUTE_OUTCOME_REJECTED,
    Outcome.NO_CONSENSUS: router_pb2.ROUTE_OUTCOME_NO_CONSENSUS,
    Outcome.FAILED: router_pb2.ROUTE_OUTCOME_FAILED,
    Outcome.BUDGET_EXHAUSTED: router_pb2.ROUTE_OUTCOME_BUDGET_EXHAUSTED,
}


class Executor(Protocol):
    """Runs one dispatch on a backend and returns its answer (never raises)."""

    async def execute(self, task: Task, timeout_s: float) -> Answer: ...


class AgentClient:
    """An AgentService worker over gRPC (insecure loopback or TLS credentials)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        self._channel = (
            grpc.aio.secure_channel(address, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(address)
        )
        self._stub = router_pb2_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def execute(self, task: Task, timeout_s: float) -> Answer:
        req = router_pb2.ExecuteRequest(task=task_to_proto(task))
        try:
            resp = await self._stub.Execute(req, timeout=max(timeout_s, 0.001))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Answer(error="timeout")
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return Answer(overloaded=True)
            if exc.code() == grpc.StatusCode.CANCELLED:
                return Answer(error="cancelled")
            return Answer(error=f"{exc.code().name}: {exc.details()}")
        return answer_from_proto(resp)

    async def close(self) -> None:
        await self._channel.close()


def answer_from_proto(resp: router_pb2.ExecuteResponse) -> Answer:
    return Answer(
        action=tuple(resp.action),
        label=resp.label,
        result=bytes(resp.result),
        work_units=resp.work_units if resp.work_units != 0 else None,
        gpu_s=resp.gpu_seconds if resp.gpu_seconds != 0 else None,
        overloaded=resp.overloaded,
        error=resp.error,
    )


def task_to_proto(task: Task) -> router_pb2.Task:
    c = task.constraints
    return router_pb2.Task(
        task_type=task.task_type,
        qos=int(task.qos),  # type: ignore[arg-type]
        deadline_ms=max(0, int((task.deadline_at - time.monotonic()) * 1000)),
        observation=list(task.observation),
        payload=task.payload,
        idempotency_key=task.task_id,
        work_units=task.work_units,
        action_low=list(c.action_low) if c else [],
        action_high=list(c.action_high) if c else [],
    )


def task_from_proto(msg: router_pb2.Task, scope: Scope, now: float) -> Task:
    """Validate an untrusted Task message; raise ValueError naming the bad field."""
    if not msg.task_type or len(msg.task_type) > MAX_TASK_TYPE:
        raise ValueError(f"task.task_type must be 1..{MAX_TASK_TYPE} characters")
    if msg.qos not in (1, 2, 3):
        raise ValueError("task.qos must be SAFETY, INTERACTIVE or BATCH")
    if msg.deadline_ms > MAX_DEADLINE_MS:
        raise ValueError(f"task.deadline_ms = {msg.deadline_ms}; at most {MAX_DEADLINE_MS}")
    if len(msg.observation) > MAX_OBSERVATION:
        raise ValueError(f"task.observation has {len(msg.observation)} values; at most 4096")
    obs = tuple(float(x) for x in msg.observation)
    if not all(math.isfinite(x) for x in obs):
        raise ValueError("task.observation has a NaN or infinite value")
    work = msg.work_units or 1.0
    if not (math.isfinite(work) and 0 < work <= 1e6):
        raise ValueError(f"task.work_units = {msg.work_units}; expected 0 < w ≤ 1e6")
    lo, hi = tuple(msg.action_low), tuple(msg.action_high)
    if len(lo) != len(hi) or any(not (a <= b) for a, b in zip(lo, hi, strict=False)):
        raise ValueError("task.action_low/action_high must have equal length and low ≤ high")
    key = msg.idempotency_key[:128] or uuid.uuid4().hex
    return Task(
        f"{scope.device or scope.tenant}:{key}",
        msg.task_type,
        Qos(msg.qos),
        now + msg.deadline_ms / 1000.0,
        scope,
        work,
        obs,
        bytes(msg.payload),
        Constraints(lo, hi) if lo else None,
    )


def result_to_proto(res: Result) -> router_pb2.RouteResponse:
    a = res.answer
    return router_pb2.RouteResponse(
        outcome=OUTCOME_PROTO[res.outcome],
        action=list(a.action) if a else [],
        result=a.result if a else b"",
        label=a.label if a else "",
        backend=res.backend,
        cost_usd=res.cost_usd,
        retry_after_ms=math.ceil(res.retry_after_s * 1000),
        reason=res.reason,
        verifier_score=res.verifier_score,
        decision_id=res.decision_id,
        escalations=res.escalations,
    )
