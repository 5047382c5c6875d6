"""`FleetAdminService`: the operator API used by the CLI and the TUI.

Every RPC needs an operator certificate (devices get PERMISSION_DENIED); RPCs that
change the fleet (publish, rollouts) need role ``admin``. Rollout RPCs are served by
the handler a rollout package puts in ``plane.extensions["rollouts"]`` (an object
with async methods named like the RPCs, taking ``(request, context, identity)``);
without one they answer UNIMPLEMENTED.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.publish import PublishError, publish_bundle
from cloud.server._rpc import RpcError, stream, unary
from cloud.server.auth import Authenticator, Identity
from cloud.server.plane import Plane
from cloud.store import BundleRecord, DeviceRecord, parse_label_selector
from protos import admin_pb2, admin_pb2_grpc, common_pb2
from runtime.desired_state import BundleRef, DesiredStateError

__all__ = ["FleetAdminServicer", "bundle_to_pb", "device_to_pb", "register"]

M = TypeVar("M", bound=Message)

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _ref(d: dict[str, Any] | None) -> common_pb2.BundleRef | None:
    try:
        ref = BundleRef.from_dict(d)
    except DesiredStateError:  # stored before reports were validated: shown as none
        return None
    return ref.to_pb() if ref is not None else None


def device_to_pb(d: DeviceRecord) -> admin_pb2.Device:
    h = d.health or {}
    return admin_pb2.Device(
        id=d.id,
        labels=d.labels,
        hardware_tags=d.hardware_tags,
        online=d.online,
        last_seen=_ts(d.last_seen),
        active_bundle=_ref(d.active_bundle),
        update_state=d.update_state,
        update_reason=d.update_reason,
        update_detail=d.update_detail,
        health=admin_pb2.DeviceHealth(
            loop_p50_ms=float(h.get("loop_p50_ms", 0.0)),
            loop_p99_ms=float(h.get("loop_p99_ms", 0.0)),
            deadline_miss_rate=float(h.get("deadline_miss_rate", 0.0)),
            safety_interventions=int(h.get("safety_interventions", 0)),
            cpu_percent=float(h.get("cpu_percent", 0.0)),
            temperature_c=float(h.get("temperature_c", 0.0)),
            memory_percent=float(h.get("memory_percent", 0.0)),
        ),
        certificate_fingerprint=d.cert_fingerprint,
        revoked=d.revoked,
        runtime_version=d.runtime_version,
    )


def bundle_to_pb(b: BundleRecord) -> admin_pb2.Bundle:
    return admin_pb2.Bundle(
        ref=common_pb2.BundleRef(
            name=b.name,
            version=b.version,
            sequence=b.sequence,
            policy_sha256=b.policy_sha256,
            oms_root_digest=b.oms_root_digest,
        ),
        size_bytes=b.size_bytes,
        signer_key_id=b.signer_key_id,
        published_at=_ts(b.published_at),
        target_path=b.target_path,
    )


def _selector(text: str) -> dict[str, str]:
    try:
        return parse_label_selector(text)
    except ValueError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"label_selector: {exc}") from exc


def _page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size > MAX_PAGE:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"page_size {page.page_size} > maximum {MAX_PAGE}"
        )
    return page.page_size or DEFAULT_PAGE


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not valid") from exc


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode() if value else ""


class FleetAdminServicer(admin_pb2_grpc.FleetAdminServiceServicer):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    async def _operator(self, context: Any, *, write: bool = False) -> Identity:
        ident = await self.plane.auth.identify(context)
        return Authenticator.require_operator(ident, write=write)

    # ------------------------------------------------------------------ devices
    @unary
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: Any
    ) -> admin_pb2.ListDevicesResponse:
        await self._operator(context)
        page = await self.plane.db(
            self.plane.store.list_devices,
            _selector(request.label_selector),
            text=request.text or None,
            limit=_page_size(request.page),
            after=_decode_token(request.page.page_token),
        )
        return admin_pb2.ListDevicesResponse(
            devices=[device_to_pb(d) for d in page.devices],
            next_page_token=_encode_token(page.next_after),
            total=page.total,
        )

    @unary
    async def GetDevice(
        self, request: admin_pb2.GetDeviceRequest, context: Any
    ) -> admin_pb2.Device:
        await self._operator(context)
        return device_to_pb(await self.plane.db(self.plane.store.require_device, request.id))

    @unary
    async def GetDeviceHistory(
        self, request: admin_pb2.GetDeviceHistoryRequest, context: Any
    ) -> admin_pb2.DeviceHistory:
        await self._operator(context)
        store = self.plane.store
        await self.plane.db(store.require_device, request.id)
        limit = min(request.max_points or 500, 10_000)
        points = await self.plane.db(store.telemetry, request.id, limit=limit)
        events = await self.plane.db(store.events, request.id, kind="update", limit=limit)
        out = admin_pb2.DeviceHistory(id=request.id)
        for p in points:
            at = _ts(p.at)
            out.loop_p99_ms.add(at=at, value=p.loop_p99_ms)
            out.deadline_miss_rate.add(at=at, value=p.deadline_miss_rate)
            out.safety_interventions.add(at=at, value=float(p.safety_interventions))
        for e in events:
            out.updates.add(
                at=_ts(e.at),
                state=e.state,
                reason=e.reason_code,
                bundle=_ref(e.bundle),
                detail=e.detail,
            )
        return out

    @stream
    async def WatchFleet(
        self, request: admin_pb2.WatchFleetRequest, context: Any
    ) -> AsyncIterator[admin_pb2.FleetEvent]:
        await self._operator(context)
        selector = _selector(request.label_selector)
        store = self.plane.store
        # Subscribe before the snapshot so no change between the two is lost.
        token, queue = self.plane.watch.subscribe()
        self.plane.metrics.watchers.inc()
        try:
            after = ""
            while True:
                page = await self.plane.db(
                    store.list_devices, selector, limit=1000, after=after, with_total=False
                )
                for d in page.devices:
                    yield admin_pb2.FleetEvent(
                        kind=admin_pb2.FleetEvent.KIND_SNAPSHOT, device=device_to_pb(d)
                    )
                if not page.next_after:
                    break
                after = page.next_after
            yield admin_pb2.FleetEvent(kind=admin_pb2.FleetEvent.KIND_SNAPSHOT_DONE)
            while True:
                device_id = await queue.get()
                if device_id is None:
                    return  # plane shutting down
                if device_id == "\x00overflow":
                    raise RpcError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "this watcher fell behind the fleet's changes; watch again for a snapshot",
                    )
                ids = {device_id}
                while not queue.empty():  # coalesce bursts: one event per device
                    nxt = queue.get_nowait()
                    if nxt is None or nxt == "\x00overflow":
                        queue.put_nowait(nxt)
                        break
                    ids.add(nxt)
                for did in sorted(ids):
                    rec = await self.plane.db(store.get_device, did)
                    if rec is None:
                        yield admin_pb2.FleetEvent(
                            kind=admin_pb2.FleetEvent.KIND_REMOVED, device=admin_pb2.Device(id=did)
                        )
                    elif all(rec.labels.get(k) == v for k, v in selector.items()):
                        yield admin_pb2.FleetEvent(
                            kind=admin_pb2.FleetEvent.KIND_UPSERT, device=device_to_pb(rec)
                        )
        finally:
            self.plane.watch.unsubscribe(token)
            self.plane.metrics.watchers.dec()

    # ------------------------------------------------------------------ bundles
    def _publish_sync(self, efb: bytes, actor: str) -> BundleRecord:
        with tempfile.TemporaryDirectory(prefix=".upload-", dir=self.plane.home.state) as tmp:
            path = Path(tmp) / "upload.efb"
            path.write_bytes(efb)
            return publish_bundle(
                self.plane.home, self.plane.store, path, actor=actor, config=self.plane.config
            )

    @unary
    async def PublishBundle(
        self, request: admin_pb2.PublishBundleRequest, context: Any
    ) -> admin_pb2.PublishBundleResponse:
        ident = await self._operator(context, write=True)
        if not request.efb:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "efb is empty")
        try:
            rec = await self.plane.db(self._publish_sync, request.efb, ident.actor)
        except PublishError as exc:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        return admin_pb2.PublishBundleResponse(bundle=bundle_to_pb(rec))

    @unary
    async def ListBundles(
        self, request: admin_pb2.ListBundlesRequest, context: Any
    ) -> admin_pb2.ListBundlesResponse:
        await self._operator(context)
        size = _page_size(request.page)
        token = _decode_token(request.page.page_token)
        try:
            offset = int(token) if token else 0
        except ValueError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not valid") from exc
        rows = await self.plane.db(
            self.plane.store.list_bundles, request.name or None, limit=size + 1, offset=offset
        )
        nxt = _encode_token(str(offset + size)) if len(rows) > size else ""
        return admin_pb2.ListBundlesResponse(
            bundles=[bundle_to_pb(b) for b in rows[:size]], next_page_token=nxt
        )

    # ------------------------------------------------------------------ rollouts
    async def _rollout(
        self, name: str, request: Any, context: Any, write: bool, reply: type[M]
    ) -> M:
        """Hand a rollout RPC to the handler in ``plane.extensions["rollouts"]``."""
        ident = await self._operator(context, write=write)
        handler = self.plane.extensions.get("rollouts")
        if handler is None:
            raise RpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{name}: rollouts are not enabled on this control plane "
                "(the staged-rollout engine is not installed)",
            )
        result = await getattr(handler, name)(request, context, ident)
        if not isinstance(result, reply):
            raise TypeError(f"{name}: the rollout handler returned {type(result).__name__}")
        return result

    @unary
    async def CreateRollout(self, request: Any, context: Any) -> admin_pb2.Rollout:
        return await self._rollout("CreateRollout", request, context, True, admin_pb2.Rollout)

    @unary
    async def GetRollout(self, request: Any, context: Any) -> admin_pb2.Rollout:
        return await self._rollout("GetRollout", request, context, False, admin_pb2.Rollout)

    @unary
    async def ListRollouts(self, request: Any, context: Any) -> admin_pb2.ListRolloutsResponse:
        return await self._rollout(
            "ListRollouts", request, context, False, admin_pb2.ListRolloutsResponse
        )

    @unary
    async def PauseRollout(self, request: Any, context: Any) -> admin_pb2.Rollout:
        return await self._rollout("PauseRollout", request, context, True, admin_pb2.Rollout)

    @unary
    async def ResumeRollout(self, request: Any, context: Any) -> admin_pb2.Rollout:
        return await self._rollout("ResumeRollout", request, context, True, admin_pb2.Rollout)

    @unary
    async def AbortRollout(self, request: Any, context: Any) -> admin_pb2.Rollout:
        return await self._rollout("AbortRollout", request, context, True, admin_pb2.Rollout)

    @unary
    async def ApproveRollout(self, request: Any, context: Any) -> admin_pb2.Rollout:
        return await self._rollout("ApproveRollout", request, context, True, admin_pb2.Rollout)


def register(server: grpc.aio.Server, plane: Plane) -> list[str]:
    admin_pb2_grpc.add_FleetAdminServiceServicer_to_server(FleetAdminServicer(plane), server)  # type: ignore[no-untyped-call]
    return [admin_pb2.DESCRIPTOR.services_by_name["FleetAdminService"].full_name]
