"""RouterService over gRPC: the I/O shell around the pure `Router`.

`register(server, plane)` mounts it on the control plane (listed in
`cloud.plane_services.PLANE_SERVICES`). It reads the `[router]` table of the plane's
config file (`RouterSettings`), keeps budgets in the plane's store (`SqlLedger`, so
replicas share them), writes the audit log to ``state/router-audit.jsonl`` signed with
``keys/router-audit.key`` (created on first start), and calls backends — AgentService
workers (`edgeflux cloud agent`) — over gRPC.

Example `[router]` table::

    [router]
    budgets = [{scope = "acme", limit_usd = 50.0}]
    [[router.backends]]
    name = "planner-1"
    address = "127.0.0.1:7601"
    tier = 2
    task_types = ["plan"]
    quality = {plan = 0.95}
    capacity = 4
    per_call_usd = 0.001

The caller's device certificate names the device; its labels ``tenant`` and ``site``
(configurable) place it in the budget hierarchy.

The pieces: `cloud.router.settings` (the `[router]` table), `cloud.router.wire`
(protobuf conversion, the AgentService client), `cloud.router.runner` (the asyncio
driver); this module holds the servicer and `register`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from cloud.router.admission import AdmissionConfig
from cloud.router.audit import AuditLog, audit_log_id, verify_log
from cloud.router.backends import Registry
from cloud.router.budgets import BudgetLedger
from cloud.router.champion import ChampionChallenger
from cloud.router.classes import ClassPolicy
from cloud.router.errors import AuditError, RouterConfigError
from cloud.router.learning import LearnedStart
from cloud.router.router import Router, RouterConfig
from cloud.router.runner import RouterRunner
from cloud.router.settings import BackendSettings, ChallengerSettings, RouterSettings, by_qos
from cloud.router.task import Outcome, Scope
from cloud.router.wire import (
    OUTCOME_PROTO,
    AgentClient,
    Executor,
    result_to_proto,
    task_from_proto,
)
from protos import router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    from cloud.server.plane import Plane

__all__ = [
    "AgentClient",
    "BackendSettings",
    "Caller",
    "ChallengerSettings",
    "Executor",
    "RouterRunner",
    "RouterServicer",
    "RouterSettings",
    "load_audit_key",
    "register",
    "task_from_proto",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Caller:
    """The device behind a call: where it sits in the budget tree, and its labels."""

    scope: Scope
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """`identify(context)` returns the `Caller` or raises (grpc abort)."""

    def __init__(
        self,
        runner: RouterRunner,
        identify: Callable[[Any], Awaitable[Caller]],
        ledger: BudgetLedger | None = None,
        budget_scopes: list[str] | None = None,
        audit_path: Path | None = None,
        audit_public_key: Any = None,
        authorize_stats: Callable[[Any], Awaitable[None]] | None = None,
        witness: Callable[[], list[dict[str, Any]]] | None = None,
        policy: ClassPolicy | None = None,
    ) -> None:
        self.witness = witness
        self.policy = policy or ClassPolicy()
        self.runner = runner
        self.identify = identify
        self.ledger = ledger
        self.budget_scopes = budget_scopes or []
        self.audit_path = audit_path
        self.audit_public_key = audit_public_key
        self.authorize_stats = authorize_stats

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        caller = await self.identify(context)
        try:
            task = task_from_proto(request.task, caller.scope, time.monotonic())
            if err := self.policy.payload_error(task.qos, len(task.payload)):
                raise ValueError(err)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        grant = self.policy.grant(task.qos, caller.scope.device, caller.labels)
        if grant is None:
            await self.runner.note(
                {
                    "event": "class_denied",
                    "device": caller.scope.device,
                    "scope": str(caller.scope),
                    "qos": int(task.qos),
                    "task_type": task.task_type,
                }
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"device {caller.scope.device!r} is not granted class {task.qos.name} "
                "(the operator's [router] class_grants)",
            )
        res = await self.runner.route(dataclasses.replace(task, grant=grant or ""))
        return result_to_proto(res)

    async def RouterStats(
        self, request: router_pb2.RouterStatsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouterStatsResponse:
        if self.authorize_stats is not None:
            await self.authorize_stats(context)
        resp = router_pb2.RouterStatsResponse()
        for s in await self.runner.stats():
            resp.backends.add(
                name=s["name"],
                tier=s["tier"],
                concurrency_limit=s["limit"],
                in_flight=s["in_flight"],
                work_units_per_s=s["work_units_per_s"],
                usd_per_s=s["usd_per_s"],
                healthy=s["healthy"],
                cooldown_remaining_s=s["cooldown_remaining_s"],
                p95_latency_ms=s["p95_latency_s"] * 1000,
            )
        if self.ledger is not None:
            now = time.time()
            for scope in self.budget_scopes:
                u = await asyncio.to_thread(self.ledger.usage, scope, now)
                if u is not None:
                    resp.budgets.add(
                        scope=scope,
                        limit_usd=u.limit_usd,
                        used_usd=u.used_usd,
                        reserved_usd=u.reserved_usd,
                    )
        router = self.runner.router
        for d in list(router.recent)[:50]:
            resp.recent_decisions.add(
                decision_id=str(d["decision_id"]),
                at_unix_ms=int(float(d["at"]) * 1000),
                task_type=str(d["task_type"]),
                qos=int(d["qos"]),
                outcome=OUTCOME_PROTO[Outcome(d["outcome"])],
                backend=str(d["backend"]),
                cost_usd=float(d["cost_usd"]),
                latency_ms=float(d["latency_ms"]),
                scope=str(d["scope"]),
                reason=str(d["reason"]),
            )
        if router.audit is not None:
            resp.audit_records = router.audit.size
            head = router.audit.last_head
            resp.audit_tree_head = head["root"] if head else ""
            if self.audit_path is not None and self.audit_public_key is not None:
                resp.audit_verification.CopyFrom(await self._verify_audit())
        return resp

    async def _verify_audit(self) -> router_pb2.AuditVerification:
        assert self.audit_path is not None
        path, key = self.audit_path, self.audit_public_key

        def check() -> router_pb2.AuditVerification:
            now_ms = int(time.time() * 1000)
            try:
                heads = self.witness() if self.witness is not None else []
                report = verify_log(path.read_bytes().splitlines(), key, str(path), witness=heads)
            except (OSError, AuditError) as exc:
                return router_pb2.AuditVerification(
                    checked=True, ok=False, detail=str(exc), checked_at_unix_ms=now_ms
                )
            return router_pb2.AuditVerification(
                checked=True,
                ok=True,
                records_checked=report.records,
                detail=f"{report.tree_heads} signed tree heads; "
                f"{report.unsigned_tail} records await the next head",
                checked_at_unix_ms=now_ms,
            )

        return await asyncio.to_thread(check)


# --------------------------------------------------------------------------- plane


def load_audit_key(keys_dir: Path) -> Any:
    """The Ed25519 key that signs audit tree heads; created (0600) on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from runtime.atomicio import atomic_write_bytes

    path = keys_dir / "router-audit.key"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise RouterConfigError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    keys_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    atomic_write_bytes(
        keys_dir / "router-audit.pub",
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return key


def register(server: grpc.aio.Server, plane: Plane) -> list[str]:
    """Mount RouterService on the control plane (see the module docstring)."""
    from runtime.config import load_config

    settings = load_config(RouterSettings, "router", toml_path=plane.home.config_file)
    from cloud.store.budgets import SqlLedger

    ledger = SqlLedger(plane.store.engine)
    for b in settings.budgets:
        ledger.set_budget(b.budget())
    registry = Registry(b.spec() for b in settings.backends)
    key = load_audit_key(plane.home.keys)
    audit_path = plane.home.state / "router-audit.jsonl"
    from cloud.store.router_audit import HeadStore

    heads = HeadStore(plane.store.engine)
    log_id = audit_log_id(key.public_key(), audit_path)

    def witness(head: dict[str, Any]) -> None:
        try:
            heads.add(log_id, head)
        except AuditError as exc:  # the head is in the log; the witness must say why not
            log.error("tree head of size %s not recorded in the store: %s", head["size"], exc)

    audit = AuditLog(
        key,
        audit_path,
        every_n=settings.audit_every_n,
        every_s=settings.audit_every_s,
        keep_leaves=False,
        on_head=witness,
    )
    names = {b.name for b in settings.backends}
    for c in settings.challengers:
        for role, name in (("champion", c.champion), ("challenger", c.challenger)):
            if name not in names:
                raise RouterConfigError(
                    f"[router] challengers: {role} {name!r} for {c.task_type!r} is not a "
                    f"configured backend (known: {sorted(names)})"
                )
    router = Router(
        registry,
        ledger,
        config=RouterConfig(
            accept_score=settings.accept_score,
            max_escalations=settings.max_escalations,
            reservation_ttl_s=settings.reservation_ttl_s,
            reservation_grace_s=settings.reservation_grace_s,
            admission=AdmissionConfig(by_qos(settings.qos_shares, "qos_shares")),
            quality_floor=by_qos(settings.quality_floor, "quality_floor"),
        ),
        clock=time.monotonic,
        wall=time.time,
        audit=audit,
        selector=LearnedStart() if settings.learning else None,
        challengers=[
            ChampionChallenger(c.task_type, c.champion, c.challenger, c.mirror_share, c.min_pairs)
            for c in settings.challengers
        ],
    )
    runner = RouterRunner(router, {b.name: AgentClient(b.address) for b in settings.backends})
    auth = plane.auth

    async def identify(context: Any) -> Caller:
        from cloud.server.auth import AuthError

        try:
            ident = auth.require_device(await auth.identify(context), service="RouterService")
            device = await plane.db(plane.store.get_device, ident.id)
        except AuthError as exc:
            await context.abort(exc.code, str(exc))
            raise AssertionError("unreachable") from exc
        labels = device.labels if device is not None else {}
        tenant = labels.get(settings.tenant_label) or settings.default_tenant
        return Caller(Scope(tenant, labels.get(settings.site_label, ""), ident.id), labels)

    async def authorize_stats(context: Any) -> None:
        from cloud.server.auth import AuthError

        try:
            auth.require_operator(await auth.identify(context), service="RouterService")
        except AuthError as exc:
            await context.abort(exc.code, str(exc))

    servicer = RouterServicer(
        runner,
        identify,
        ledger,
        [b.scope for b in settings.budgets],
        audit_path,
        key.public_key(),
        authorize_stats,
        lambda: heads.heads(log_id),
        ClassPolicy.from_settings(
            by_qos(settings.class_grants, "class_grants", list),
            by_qos(settings.max_payload_bytes, "max_payload_bytes", int),
        ),
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    plane.extensions["router"] = runner
    return [router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name]
