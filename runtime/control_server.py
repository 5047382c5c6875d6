"""`RuntimeControl` over a unix socket: the fleet agent's only way into the runtime.

A synchronous grpc server with a few worker threads (requests are rare and some —
the health window, shadow — block for seconds). Every error carries a reason code
(``protos.lifecycle.Reason``) in the trailing metadata and the readable detail as the
status message; the status code says what kind of error it is: a bad bundle is
INVALID_ARGUMENT, a request that does not fit the current state FAILED_PRECONDITION,
everything else INTERNAL.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from protos import common_pb2, runtime_control_pb2, runtime_control_pb2_grpc
from protos.lifecycle import REASON_METADATA_KEY, Failure, Reason
from runtime.bundle import BundleError
from runtime.loop import LoadedPolicy, LoopError, ShadowResult
from runtime.metrics import MetricsSnapshot
from runtime.session import SessionError
from runtime.slots import SlotError
from runtime.status import ControlError, Controllable, StatusInfo

__all__ = ["MAX_SOCKET_PATH", "metrics_to_proto", "serve", "status_to_proto"]

log = logging.getLogger(__name__)
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL


def _bundle_ref(p: LoadedPolicy | None) -> common_pb2.BundleRef | None:
    if p is None:
        return None
    return common_pb2.BundleRef(
        name=p.manifest.name,
        version=p.manifest.version,
        sequence=p.manifest.sequence,
        policy_sha256=p.policy_sha256,
        oms_root_digest=p.root_digest,
    )


def _slot_info(p: LoadedPolicy | None) -> runtime_control_pb2.SlotInfo | None:
    if p is None:
        return None
    return runtime_control_pb2.SlotInfo(slot=p.slot or "", bundle=_bundle_ref(p))


def metrics_to_proto(m: MetricsSnapshot) -> runtime_control_pb2.LoopMetrics:
    return runtime_control_pb2.LoopMetrics(
        ticks=m.ticks,
        deadline_misses=m.deadline_misses,
        latency_p50_ms=m.latency_p50_ms,
        latency_p99_ms=m.latency_p99_ms,
        latency_p999_ms=m.latency_p999_ms,
        latency_max_ms=m.latency_max_ms,
        interventions=m.interventions,
        rate_hz=m.rate_hz,
        jitter_p99_ms=m.jitter_p99_ms,
        skipped_slots=m.skipped,
    )


def _failure(f: Failure | None) -> runtime_control_pb2.Failure | None:
    if f is None:
        return None
    return runtime_control_pb2.Failure(code=f.code.value, detail=f.detail)


def status_to_proto(s: StatusInfo) -> runtime_control_pb2.RuntimeStatus:
    return runtime_control_pb2.RuntimeStatus(
        active=_slot_info(s.active),
        pending=_slot_info(s.pending),
        last_good=_slot_info(s.last_good),
        state=s.state.value,
        execution_provider=s.provider,
        metrics=metrics_to_proto(s.metrics),
        anti_rollback=s.anti_rollback,
        tries_left=s.slots.tries_left,
        reason=s.failure.detail if s.failure is not None else "",
        failure=_failure(s.failure),
        swaps=s.swaps,
        scheduling=s.scheduling,
        realtime=s.realtime,
        engine_check=s.engine_check,
    )


def _shadow_to_proto(c: LoadedPolicy, r: ShadowResult) -> runtime_control_pb2.ShadowReport:
    return runtime_control_pb2.ShadowReport(
        ticks=r.ticks,
        divergence_mean=r.divergence_mean,
        divergence_max=r.divergence_max,
        nan_rate=r.nan_rate,
        latency_p99_ms=r.latency_p99_ms,
        envelope_violations=r.envelope_violations,
        compared=r.compared,
        errors=r.errors,
        candidate=_slot_info(c),
    )


class _Servicer(runtime_control_pb2_grpc.RuntimeControlServicer):
    def __init__(self, service: Controllable) -> None:
        self.svc = service

    def _call(self, context: grpc.ServicerContext, fn: Any, *args: Any) -> Any:
        def abort(code: grpc.StatusCode, reason: Reason, detail: str) -> None:
            context.set_trailing_metadata(((REASON_METADATA_KEY, reason.value),))
            context.abort(code, detail)

        try:
            return fn(*args)
        except BundleError as exc:
            abort(grpc.StatusCode.INVALID_ARGUMENT, Reason.BUNDLE_INVALID, str(exc))
        except SessionError as exc:
            abort(grpc.StatusCode.INVALID_ARGUMENT, Reason.POLICY_LOAD_FAILED, str(exc))
        except ControlError as exc:
            abort(grpc.StatusCode.FAILED_PRECONDITION, exc.reason, exc.detail)
        except SlotError as exc:
            abort(grpc.StatusCode.FAILED_PRECONDITION, Reason.STAGE_FAILED, str(exc))
        except LoopError as exc:
            abort(grpc.StatusCode.FAILED_PRECONDITION, Reason.WRONG_STATE, str(exc))
        except Exception as exc:
            log.exception("RuntimeControl request failed")
            abort(grpc.StatusCode.INTERNAL, Reason.RUNTIME_ERROR, f"{type(exc).__name__}: {exc}")

    def Status(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> Any:
        return status_to_proto(self._call(context, self.svc.status))

    def Stage(
        self, request: runtime_control_pb2.StageRequest, context: grpc.ServicerContext
    ) -> Any:
        if not request.bundle_dir:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle_dir is empty")
        policy, warm_ms = self._call(context, self.svc.stage, Path(request.bundle_dir))
        return runtime_control_pb2.StageResponse(staged=_slot_info(policy), warmup_ms=warm_ms)

    def Shadow(
        self, request: runtime_control_pb2.ShadowRequest, context: grpc.ServicerContext
    ) -> Any:
        if request.ticks < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ticks must be >= 1")
        candidate, result = self._call(context, self.svc.shadow, int(request.ticks))
        return _shadow_to_proto(candidate, result)

    def Activate(
        self, request: runtime_control_pb2.ActivateRequest, context: grpc.ServicerContext
    ) -> Any:
        return status_to_proto(
            self._call(context, self.svc.activate, int(request.health_window_ticks))
        )

    def HealthWindow(
        self, request: runtime_control_pb2.HealthWindowRequest, context: grpc.ServicerContext
    ) -> Any:
        if request.ticks < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ticks must be >= 1")
        return status_to_proto(self._call(context, self.svc.health_window, int(request.ticks)))

    def Commit(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> Any:
        return status_to_proto(self._call(context, self.svc.commit))

    def Rollback(
        self, request: runtime_control_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> Any:
        failure = None
        if request.code or request.reason:
            code = Reason.parse(request.code, Reason.ROLLBACK_REQUESTED)
            failure = Failure(code, request.reason or "rolled back by request")
        return status_to_proto(self._call(context, self.svc.rollback, failure))

    def StreamMetrics(
        self, request: runtime_control_pb2.MetricsRequest, context: grpc.ServicerContext
    ) -> Iterator[runtime_control_pb2.LoopMetrics]:
        period = max(request.period_ms or 1000, 10) / 1000.0
        while context.is_active():
            loop = self.svc.loop
            if loop is not None:
                yield metrics_to_proto(loop.snapshot())
            time.sleep(period)


def serve(service: Controllable, socket_path: Path, workers: int = 4) -> grpc.Server:
    """Start RuntimeControl on `socket_path` (replacing a stale socket file)."""
    path = Path(socket_path)
    if len(str(path)) > MAX_SOCKET_PATH:
        raise SlotError(
            f"control socket path {path} is {len(str(path))} bytes; unix sockets allow "
            f"{MAX_SOCKET_PATH}: use a shorter --root"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # We hold the runtime lock, so a socket file here is a leftover of a dead runtime.
    path.unlink(missing_ok=True)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtctl")
    )
    runtime_control_pb2_grpc.add_RuntimeControlServicer_to_server(  # type: ignore[no-untyped-call]
        _Servicer(service), server
    )
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise SlotError(f"cannot bind the control socket {path}")
    server.start()
    os.chmod(path, 0o660)
    return server
