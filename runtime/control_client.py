"""Client of the runtime's `RuntimeControl` service (used by the fleet agent and the CLI).

::

    with RuntimeControlClient(RobotLayout.at(root).runtime_socket) as rt:
        print(rt.status().state)
        rt.stage("/var/lib/edgeflux/agent/downloads/pendulum-1.1.0")
        report = rt.shadow(500)
        rt.activate()                                  # switch on a safe tick
        status = rt.health_window(500)                 # rolls back by itself if unhealthy
        if status.state == RuntimeState.ACTIVATED:
            rt.commit()

Every failure is a `RuntimeControlError` carrying the gRPC status code, the runtime's
reason code (`protos.lifecycle.Reason`) and its detail (e.g. FAILED_PRECONDITION,
WRONG_STATE, "nothing staged to activate").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from protos import common_pb2, runtime_control_pb2, runtime_control_pb2_grpc
from protos.lifecycle import REASON_METADATA_KEY, Failure, Reason

__all__ = ["RuntimeControlClient", "RuntimeControlError"]


class RuntimeControlError(RuntimeError):
    """A RuntimeControl call failed: `code` is the grpc.StatusCode, `failure` the
    runtime's reason code and detail (RUNTIME_UNAVAILABLE when nothing answered)."""

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, failure: Failure | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.failure = failure or Failure(Reason.RUNTIME_ERROR, message)


def _reason_of(exc: grpc.RpcError) -> Reason | None:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_METADATA_KEY:
            return Reason.parse(str(value), Reason.RUNTIME_ERROR)
    return None


class RuntimeControlClient:
    def __init__(self, socket_path: str | Path, timeout_s: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix:{self.socket_path}")
        self._stub = runtime_control_pb2_grpc.RuntimeControlStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> RuntimeControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            reason = _reason_of(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"no runtime answering on {self.socket_path} ({details})"
                reason = reason or Reason.RUNTIME_UNAVAILABLE
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                reason = reason or Reason.DEADLINE_EXCEEDED
            name = code.name if code is not None else "ERROR"
            failure = Failure(reason or Reason.RUNTIME_ERROR, str(details))
            raise RuntimeControlError(f"{name}: {details}", code, failure) from exc

    def status(self) -> runtime_control_pb2.RuntimeStatus:
        return self._call(self._stub.Status, common_pb2.Empty())  # type: ignore[no-any-return]

    def stage(self, bundle_dir: str | Path) -> runtime_control_pb2.StageResponse:
        req = runtime_control_pb2.StageRequest(bundle_dir=str(Path(bundle_dir).resolve()))
        return self._call(self._stub.Stage, req)  # type: ignore[no-any-return]

    def shadow(
        self, ticks: int, timeout_s: float | None = None
    ) -> runtime_control_pb2.ShadowReport:
        req = runtime_control_pb2.ShadowRequest(ticks=ticks)
        return self._call(self._stub.Shadow, req, timeout_s)  # type: ignore[no-any-return]

    def activate(
        self, health_window_ticks: int = 0, timeout_s: float | None = None
    ) -> runtime_control_pb2.RuntimeStatus:
        req = runtime_control_pb2.ActivateRequest(health_window_ticks=health_window_ticks)
        return self._call(self._stub.Activate, req, timeout_s)  # type: ignore[no-any-return]

    def health_window(
        self, ticks: int, timeout_s: float | None = None
    ) -> runtime_control_pb2.RuntimeStatus:
        req = runtime_control_pb2.HealthWindowRequest(ticks=ticks)
        return self._call(self._stub.HealthWindow, req, timeout_s)  # type: ignore[no-any-return]

    def commit(self) -> runtime_control_pb2.RuntimeStatus:
        return self._call(self._stub.Commit, common_pb2.Empty())  # type: ignore[no-any-return]

    def rollback(self, failure: Failure | None = None) -> runtime_control_pb2.RuntimeStatus:
        req = runtime_control_pb2.RollbackRequest()
        if failure is not None:
            req.code, req.reason = failure.code.value, failure.detail
        return self._call(self._stub.Rollback, req)  # type: ignore[no-any-return]

    def metrics(self, period_ms: int = 1000) -> Iterator[runtime_control_pb2.LoopMetrics]:
        """Stream loop metrics every `period_ms` until the caller stops iterating."""
        stream = self._stub.StreamMetrics(runtime_control_pb2.MetricsRequest(period_ms=period_ms))
        try:
            yield from stream
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise RuntimeControlError(
                    f"metrics stream ended: {exc.details()}", exc.code()
                ) from exc
        finally:
            stream.cancel()
