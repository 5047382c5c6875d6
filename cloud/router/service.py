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

`RouterRunner` is the asyncio driver: all router calls run on one dedicated thread
(the router is single-threaded and the SQL ledger blocks), dispatches run as asyncio
tasks with per-call deadlines, and a timer task drives `tick` and flushes the audit log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc
from pydantic import BaseModel, ConfigDict, Field

from cloud.router.admission import AdmissionConfig
from cloud.router.audit import AuditLog, audit_log_id, verify_log
from cloud.router.backends import BackendSpec, PriceModel, Registry
from cloud.router.budgets import Budget, BudgetLedger
from cloud.router.champion import ChampionChallenger
from cloud.router.classes import ClassPolicy
from cloud.router.errors import AuditError, RouterConfigError
from cloud.router.router import Dispatch, Router, RouterConfig, Step
from cloud.router.task import Answer, Constraints, Outcome, Qos, Result, Scope, Task
from protos import router_pb2, router_pb2_grpc

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

MAX_DEADLINE_MS = 600_000
MAX_OBSERVATION = 4096
MAX_TASK_TYPE = 64

_OUTCOME = {
    Outcome.OK: router_pb2.ROUTE_OUTCOME_OK,
    Outcome.REJECTED: router_pb2.ROUTE_OUTCOME_REJECTED,
    Outcome.NO_CONSENSUS: router_pb2.ROUTE_OUTCOME_NO_CONSENSUS,
    Outcome.FAILED: router_pb2.ROUTE_OUTCOME_FAILED,
    Outcome.BUDGET_EXHAUSTED: router_pb2.ROUTE_OUTCOME_BUDGET_EXHAUSTED,
}


class BackendSettings(BaseModel):
    """One backend: where it listens and what it can do."""

    model_config = ConfigDict(extra="forbid")

    name: str
    address: str = Field(description="host:port of its AgentService")
    tier: int = 0
    task_types: list[str]
    quality: dict[str, float] = Field(default_factory=dict)
    capacity: int = 4
    per_call_usd: float = 0.0
    per_work_unit_usd: float = 0.0
    per_gpu_second_usd: float = 0.0
    latency_s_per_work_unit: float = 0.05
    timeout_s: float = 30.0

    def spec(self) -> BackendSpec:
        return BackendSpec(
            self.name,
            self.tier,
            frozenset(self.task_types),
            PriceModel(self.per_call_usd, self.per_work_unit_usd, self.per_gpu_second_usd),
            capacity=self.capacity,
            quality=dict(self.quality),
            latency_s_per_work_unit=self.latency_s_per_work_unit,
            timeout_s=self.timeout_s,
        ).validate()


class BudgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str
    limit_usd: float
    limit_work_units: float | None = None
    soft_fraction: float = 0.8
    safety_allowance_usd: float = 0.0
    period_s: float = 30 * 86400.0

    def budget(self) -> Budget:
        return Budget(
            self.scope,
            self.limit_usd,
            self.limit_work_units,
            self.soft_fraction,
            self.safety_allowance_usd,
            self.period_s,
        ).validate()


class ChallengerSettings(BaseModel):
    """Mirror a share of one task type's traffic to a challenger backend."""

    model_config = ConfigDict(extra="forbid")

    task_type: str
    champion: str
    challenger: str
    mirror_share: float = Field(0.05, ge=0, le=1)
    min_pairs: int = Field(30, ge=1)


class RouterSettings(BaseModel):
    """`[router]` settings of a control plane (env: ``EDGEFLUX_ROUTER_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    backends: list[BackendSettings] = Field(default_factory=list)
    budgets: list[BudgetSettings] = Field(default_factory=list)
    tenant_label: str = Field("tenant", description="device label naming its tenant")
    site_label: str = Field("site", description="device label naming its site")
    default_tenant: str = Field("default", description="tenant of a device without the label")
    challengers: list[ChallengerSettings] = Field(default_factory=list)
    qos_shares: dict[str, float] = Field(
        default_factory=lambda: {"SAFETY": 0.3, "INTERACTIVE": 0.5, "BATCH": 0.2},
        description="guaranteed share of each backend's concurrency limit per class",
    )
    quality_floor: dict[str, float] = Field(
        default_factory=lambda: {"SAFETY": 0.9, "INTERACTIVE": 0.7, "BATCH": 0.5},
        description="least predicted quality a backend needs to serve a class",
    )
    class_grants: dict[str, list[str]] = Field(
        default_factory=lambda: {"SAFETY": list[str]()},
        description="devices that may use a class: 'device:<id>', 'label:<k>=<v>' or '*'; "
        "a class not listed is open to every device (SAFETY: nobody by default)",
    )
    max_payload_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="largest task payload per class (default SAFETY 64 KiB, "
        "INTERACTIVE 256 KiB, BATCH 1 MiB)",
    )
    accept_score: float = Field(0.6, ge=0, le=1, description="verifier score that accepts")
    max_escalations: int = Field(2, ge=0, le=5)
    reservation_ttl_s: float | None = Field(
        None,
        gt=0,
        description="longest hold of a budget reservation; default: the longest backend "
        "timeout_s plus reservation_grace_s. A backend that could outlive it is refused.",
    )
    reservation_grace_s: float = Field(
        30.0, ge=0, description="a reservation outlives its call's deadline by this much"
    )
    audit_every_n: int = Field(256, gt=0, description="sign a tree head every N records")
    audit_every_s: float = Field(10.0, gt=0, description="... or every T seconds")


# --------------------------------------------------------------------------- backends


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


# --------------------------------------------------------------------------- driver


class RouterRunner:
    """Drives a `Router` from asyncio: one router thread, dispatches as tasks.

    Every router call that returns a `Step` goes through `_post`: the step is applied on
    the event loop when the call finishes, whether or not its caller still waits, so a
    caller cancelled mid-admission loses no dispatch (no call is charged that never ran).
    A cancelled `route` posts `Router.cancel` right behind its submit (one FIFO thread),
    so a retry with the same idempotency key always finds the key free.
    """

    def __init__(
        self,
        router: Router,
        executors: Mapping[str, Executor],
        *,
        flush_every_s: float = 0.2,
    ) -> None:
        self.router = router
        self.executors = dict(executors)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="router")
        # task id -> (the caller's future, sequence number of its submit)
        self._waiting: dict[str, tuple[asyncio.Future[Result], int]] = {}
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flush_every_s = flush_every_s
        self._seq = itertools.count()
        self._closed = False

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _post(
        self, fn: Callable[[], Step], owner: asyncio.Future[Result] | None = None
    ) -> tuple[int, asyncio.Future[None]]:
        """Run `fn` on the router thread; apply its step on the loop once it returns."""
        loop = asyncio.get_running_loop()
        seq = next(self._seq)
        applied: asyncio.Future[None] = loop.create_future()

        def apply(cf: concurrent.futures.Future[Step]) -> None:
            exc = cf.exception()
            if exc is not None:
                log.error("router call failed: %r", exc)
                if owner is not None and not owner.done():
                    owner.set_exception(exc)
                applied.set_exception(exc)
                return
            self._apply(cf.result(), seq)
            applied.set_result(None)

        def finished(cf: concurrent.futures.Future[Step]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to apply
                loop.call_soon_threadsafe(apply, cf)

        self._pool.submit(fn).add_done_callback(finished)
        return seq, applied

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._timers())

    @property
    def waiting(self) -> int:
        """Callers waiting for a result."""
        return len(self._waiting)

    async def route(self, task: Task) -> Result:
        self.start()
        tid = task.task_id
        if tid in self._waiting:
            # Same device, same idempotency key, still in flight: one answer per key.
            return Result(tid, Outcome.FAILED, "duplicate_task_id")
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        seq, _ = self._post(lambda: self.router.submit(task), owner=fut)
        self._waiting[tid] = (fut, seq)
        try:
            return await fut
        except asyncio.CancelledError:
            # Whatever the router did with the task so far, undo what is still open.
            self._post(lambda: self.router.cancel(tid))
            raise
        finally:
            entry = self._waiting.get(tid)
            if entry is not None and entry[0] is fut:
                del self._waiting[tid]

    def _apply(self, step: Step, seq: int) -> None:
        for r in step.results:
            entry = self._waiting.get(r.task_id)
            # A step produced before this caller's submit belongs to an earlier attempt.
            if entry is not None and seq >= entry[1] and not entry[0].done():
                entry[0].set_result(r)
        for did in step.cancels:
            call = self._calls.get(did)
            if call is not None:
                call.cancel()
        loop = asyncio.get_running_loop()
        for d in step.dispatches:
            self._calls[d.dispatch_id] = loop.create_task(self._run(d))
        self._wake.set()

    async def _run(self, d: Dispatch) -> None:
        ex = self.executors.get(d.backend)
        try:
            if ex is None:
                answer = Answer(error=f"no executor for backend {d.backend!r}")
            elif self._closed:
                answer = Answer(error="cancelled")
            else:
                answer = await ex.execute(d.task, d.deadline_at - time.monotonic())
        except asyncio.CancelledError:
            answer = Answer(error="cancelled")
        except Exception as exc:  # a backend plug-in must never take the router down
            log.warning("backend %s raised %r", d.backend, exc)
            answer = Answer(error=f"{type(exc).__name__}: {exc}")
        finally:
            self._calls.pop(d.dispatch_id, None)
        self._post(lambda: self.router.on_answer(d.dispatch_id, answer))

    async def _timers(self) -> None:
        last_flush = time.monotonic()
        while not self._closed:
            nxt = self.router.next_wakeup()
            delay = self._flush_every_s if nxt is None else max(0.0, nxt - time.monotonic())
            self._wake.clear()
            with _suppress_timeout():
                await asyncio.wait_for(self._wake.wait(), min(delay, self._flush_every_s))
            await self._post(self.router.tick)[1]
            if time.monotonic() - last_flush >= self._flush_every_s:
                last_flush = time.monotonic()
                await self._call(self.router.flush_audit)

    async def note(self, event: dict[str, Any]) -> None:
        """Audit an event on the router thread (`Router.note`)."""
        await self._call(lambda: self.router.note(event))

    async def stats(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = await self._call(self.router.stats)
        return stats

    async def close(self) -> None:
        """Cancel calls in flight (their reservations are released), write every decision
        to the audit log and sign a final tree head."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        calls = list(self._calls.values())
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await self._post(Step)[1]  # the calls' answers are applied (FIFO) before this
        await self._call(self.router.flush_audit)
        if self.router.audit is not None:
            await self._call(self.router.audit.close)
        self._pool.shutdown(wait=True)


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: object, ev: object, tb: object) -> bool:
        return et is asyncio.TimeoutError or et is TimeoutError


# --------------------------------------------------------------------------- servicer


def result_to_proto(res: Result) -> router_pb2.RouteResponse:
    a = res.answer
    return router_pb2.RouteResponse(
        outcome=_OUTCOME[res.outcome],
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
                outcome=_OUTCOME[Outcome(d["outcome"])],
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


def _by_qos(
    values: Mapping[str, Any], field: str, kind: Callable[[Any], Any] = float
) -> dict[Qos, Any]:
    out: dict[Qos, Any] = {}
    for name, v in values.items():
        try:
            out[Qos[name.upper()]] = kind(v)
        except KeyError:
            raise RouterConfigError(
                f"[router] {field}: unknown class {name!r}; expected SAFETY, INTERACTIVE, BATCH"
            ) from None
    return out


def register(server: grpc.aio.Server, plane: Any) -> list[str]:
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
            admission=AdmissionConfig(_by_qos(settings.qos_shares, "qos_shares")),
            quality_floor=_by_qos(settings.quality_floor, "quality_floor"),
        ),
        clock=time.monotonic,
        wall=time.time,
        audit=audit,
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
            ident = auth.require_device(await auth.identify(context))
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
            auth.require_operator(await auth.identify(context))
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
            _by_qos(settings.class_grants, "class_grants", list),
            _by_qos(settings.max_payload_bytes, "max_payload_bytes", int),
        ),
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    plane.extensions["router"] = runner
    return [router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name]
