"""The rollout handler of the control plane's admin API, and the driver that runs waves.

``register(server, plane)`` (listed in ``cloud.plane_services.PLANE_SERVICES``) puts a
:class:`RolloutService` in ``plane.extensions["rollouts"]``; the admin service routes
``CreateRollout`` … ``AbortRollout`` to it after checking the operator (admin for
changes, any operator for reads). It adds no gRPC service of its own.

The driver (one asyncio task per plane) runs every ``poll_s`` and whenever the fleet
watch announces a device change:

1. a pending rollout starts; the wave to dispatch gets its devices' desired state
   pointed at the bundle and an MQTT hint each — through ``cloud.push.push`` exactly as
   ``edgeflux cloud push`` does (a missed hint is fine: agents poll desired state);
2. devices of dispatched waves are checked for a terminal outcome: an ``update`` event
   for this bundle at or after the wave's dispatch (what ingest records from the
   agents' events: COMMITTED / FAILED / ROLLED_BACK), or the device reporting this
   bundle active and COMMITTED; a device whose newest event is HELD (an update lock or
   a closed maintenance window) is waited for, and released when it reports on;
3. the pure engine (``cloud.rollouts.engine``) decides: advance, complete, or pause.

Every change is persisted (``Store.put_rollout``) before the next pass, so a plane
restart resumes where it was. A dispatch or retry is applied exactly once across a
restart: its intent (wave, devices, their generations) is saved first, a replay leaves
devices it already pointed at the bundle at their generation, then it is marked done.
One plane drives rollouts at a time: on PostgreSQL, replicas elect it through an advisory-lock
lease (``cloud.lease``); on SQLite the one plane process drives them. Every write of a
pass carries the lease's epoch: a driver deposed mid-pass (stalled past its lease while
another replica took over) has its writes refused (``FencedError``) and stands down.
Operators change rollouts from any replica without the lease: a rollout is saved only
over the revision its writer read, and every write of the driver's step for one rollout
is refused (``StaleWriteError``) once an operator saved it meanwhile, so a pause or an
abort is never overwritten, nor outrun by a wave decided just before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from cloud.lease import AdvisoryLease, lease_for
from cloud.rollouts import retry
from cloud.rollouts.attested import admit, record_admission, wave_may_go
from cloud.rollouts.create import create_rollout, plans_to_pb
from cloud.rollouts.dynamic import newcomers, offline_policy, skip_reason
from cloud.rollouts.engine import (
    ACTIVE_STATES,
    Rollout,
    RolloutSpec,
    TransitionError,
)
from cloud.rollouts.external import BackgroundAsker
from cloud.rollouts.gates import AttestationCheck, approve
from cloud.rollouts.outcomes import CLOCK_SKEW_S, report_of
from cloud.rollouts.plan import DevicePlan, record_dropped
from cloud.rollouts.soak import abort_due
from cloud.rollouts.wire import (
    abort_min_robots_of,
    abort_threshold_of,
    approval_check_of,
    bundle_ref,
    max_held_of,
    offline_policy_of,
    retry_policy_of,
    rollout_to_pb,
    soak_policy_of,
)
from cloud.server._rpc import RpcError
from cloud.server.auth import Identity
from cloud.server.plane import Plane
from cloud.store import (
    DeviceRecord,
    EventRecord,
    FencedError,
    RolloutRecord,
    StaleWriteError,
    Store,
)
from cloud.store.fence import fenced, guarded
from protos import admin_pb2
from runtime.desired_state import GatePolicy

if TYPE_CHECKING:
    from cloud.push import PushResult

__all__ = ["RolloutService", "register", "rollout_to_pb"]

log = logging.getLogger(__name__)

HINT_WAIT_S = 2.0
SAVE_TRIES = 5  # an operator's change re-read and re-applied when a driver saved meanwhile
ABANDONED_S = 30.0  # an operator's abort left unfinished this long: the driver finishes it
MQTT_RETRY_S = 30.0
MAX_PAGE = 1000
INTENT = "intent"  # in Rollout.gates: the dispatch or retry being applied


Hinter = Callable[[str, bytes], bool]


class RolloutService:
    """Handler object for ``plane.extensions["rollouts"]`` plus the driver loop."""

    def __init__(
        self, plane: Plane, *, poll_s: float = 0.5, full_scan_s: float = 5.0, hints: bool = True
    ) -> None:
        self.plane = plane
        self.poll_s = poll_s
        self.full_scan_s = full_scan_s
        self.hints = hints
        # Devices the fleet watch announced as changed since the last pass; None: check
        # every waiting device (at start, on create/resume, and every `full_scan_s`).
        self._dirty: set[str] | None = None
        self._last_full = -1e9
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Queue[str | None] | None = None
        self._mqtt: Any = None
        self._mqtt_failed_at = -1e9
        # Several replicas on one PostgreSQL: only the lease holder drives rollouts.
        self.lease: AdvisoryLease | None = None
        self._deposed_epoch = 0  # the term whose write the store refused
        # External approval checks run on threads of their own, off the driver's pass.
        self._asker = BackgroundAsker()

    @property
    def store(self) -> Store:
        return self.plane.store

    # ------------------------------------------------------------------ persistence
    def _load(self, rollout_id: str) -> Rollout:
        rec = self.store.get_rollout(rollout_id)
        if rec is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"no rollout {rollout_id!r}")
        return Rollout.from_dicts(rec.id, rec.spec, rec.status)

    def _save(self, r: Rollout) -> None:
        now = dt.datetime.now(dt.UTC)
        r.revision = self.store.put_rollout(
            RolloutRecord(
                id=r.id,
                bundle_name=str(r.spec.bundle["name"]),
                bundle_version=str(r.spec.bundle["version"]),
                state=r.state,
                spec=r.spec.to_dict(),
                status=r.to_status(),
                created_at=dt.datetime.fromtimestamp(r.created_at, dt.UTC),
                updated_at=now,
                created_by=r.created_by,
            ),
            expect=r.revision,
        )

    # ------------------------------------------------------------------ RPCs
    def _create(
        self, request: admin_pb2.CreateRolloutRequest, identity: Identity
    ) -> tuple[Rollout, list[DevicePlan]]:
        now = time.time()
        found: list[AttestationCheck] = []

        def gates(spec: RolloutSpec) -> RolloutSpec:
            spec, check = admit(
                self.store,
                self.plane.home.trust,
                spec,
                allow_unattested=request.allow_unattested,
                approval_waves=tuple(request.approval_waves),
                actor=identity.actor,
                now=now,
                retry=retry_policy_of(request),
                soak=soak_policy_of(request),
                abort_threshold=abort_threshold_of(request),
                abort_min_robots=abort_min_robots_of(request),
                extra={
                    **approval_check_of(request),
                    **offline_policy_of(request),
                    **max_held_of(request),
                },
            )
            found.append(check)
            return spec

        r, plans = create_rollout(self.store, request, identity.actor, gates)
        record_admission(self.store, r, found[0], now)
        self._save(r)
        return r, plans

    async def CreateRollout(
        self, request: admin_pb2.CreateRolloutRequest, context: Any, identity: Identity
    ) -> admin_pb2.Rollout:
        async with self._lock:
            r, plans = await self.plane.db(self._create, request, identity)
        self.kick()
        reply = rollout_to_pb(r)
        reply.plan.extend(plans_to_pb(plans))
        return reply

    async def GetRollout(
        self, request: admin_pb2.RolloutId, context: Any, identity: Identity
    ) -> admin_pb2.Rollout:
        r = await self.plane.db(self._load, request.id)
        return rollout_to_pb(r)

    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: Any, identity: Identity
    ) -> admin_pb2.ListRolloutsResponse:
        size = min(request.page.page_size or 100, MAX_PAGE)
        token = request.page.page_token
        if token and not token.isdigit():
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not valid")
        offset = int(token or 0)
        rows = await self.plane.db(self.store.list_rollouts, limit=size + 1, offset=offset)
        out = [rollout_to_pb(Rollout.from_dicts(x.id, x.spec, x.status)) for x in rows[:size]]
        nxt = str(offset + size) if len(rows) > size else ""
        return admin_pb2.ListRolloutsResponse(rollouts=out, next_page_token=nxt)

    async def _change(self, rollout_id: str, fn: Callable[[Rollout], Any]) -> tuple[Rollout, Any]:
        """Apply an operator's `fn` to the stored rollout and save it over the revision
        read; if another replica's driver saved meanwhile, read it again and re-apply."""
        async with self._lock:
            for attempt in range(SAVE_TRIES):
                r: Rollout = await self.plane.db(self._load, rollout_id)
                try:
                    got = fn(r)
                except TransitionError as exc:
                    raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
                try:
                    await self.plane.db(self._save, r)
                    break
                except StaleWriteError:
                    if attempt + 1 == SAVE_TRIES:
                        raise RpcError(
                            grpc.StatusCode.ABORTED,
                            f"rollout {rollout_id} kept changing; try again",
                        ) from None
        self.kick()
        return r, got

    async def PauseRollout(
        self, request: admin_pb2.RolloutId, context: Any, identity: Identity
    ) -> admin_pb2.Rollout:
        r, _ = await self._change(
            request.id, lambda r: r.pause(time.time(), f"paused by {identity.actor}")
        )
        return rollout_to_pb(r)

    async def ResumeRollout(
        self, request: admin_pb2.RolloutId, context: Any, identity: Identity
    ) -> admin_pb2.Rollout:
        r, _ = await self._change(request.id, lambda r: r.resume(time.time(), identity.actor))
        return rollout_to_pb(r)

    async def ApproveRollout(
        self, request: admin_pb2.RolloutId, context: Any, identity: Identity
    ) -> admin_pb2.Rollout:
        """Approve a wave that waits for it (``request.wave``, or the next waiting one)."""
        wave = request.wave if request.HasField("wave") else None
        actor = identity.actor
        r, index = await self._change(request.id, lambda r: approve(r, wave, actor, time.time()))
        await self.plane.db(self.store.audit, actor, "rollout.approve", r.id, {"wave": index})
        return rollout_to_pb(r)

    async def AbortRollout(
        self, request: admin_pb2.RolloutId, context: Any, identity: Identity
    ) -> admin_pb2.Rollout:
        """Abort: no further wave; with ``request.rollback`` devices already pointed at
        this bundle get their previous desired bundle back (and a hint)."""
        async with self._lock:
            for attempt in range(SAVE_TRIES):
                r = await self.plane.db(self._load, request.id)
                try:
                    await self.plane.db(
                        self._guarded, r, self._abort, r, identity.actor, request.rollback
                    )
                    break
                except TransitionError as exc:
                    raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
                except StaleWriteError:  # the driver saved it meanwhile: read it again
                    if attempt + 1 == SAVE_TRIES:
                        raise RpcError(
                            grpc.StatusCode.ABORTED, f"rollout {r.id} kept changing; try again"
                        ) from None
        return rollout_to_pb(r)

    def _abort(
        self, r: Rollout, by: str, rollback: bool, decision: Mapping[str, Any] | None = None
    ) -> None:
        """Abort `r` (by an operator, or on its abort threshold's `decision`); with
        `rollback`, point its devices back at their previous desired bundle.

        Applied exactly once across a plane restart: the aborted state, the decision and
        the restore (an intent) are saved before any device is touched; a replay
        (`_finish_abort`) skips devices it already restored."""
        now = time.time()
        restore = r.abort(now, by, rollback=rollback)
        if decision is not None:
            r.gates["abort"] = {**decision, "at": now, "key": uuid.uuid4().hex}
        if not rollback:
            self._save(r)
            self._audit_abort(r)
            return
        actor = by if decision is None else f"rollout:{r.id}"
        self._intend(r, "abort", r.current, sorted(restore), restore=restore, actor=actor)
        self._finish_abort(r)

    def _audit_abort(self, r: Rollout) -> None:
        """Audit the abort-threshold decision once: its entry is keyed on the decision
        saved (with the abort's intent) before anything was applied, so a replay after
        a restart between the audit write and the next save writes no second one."""
        got = r.gates.get("abort")
        if not isinstance(got, dict) or "key" not in got:
            return  # an operator's abort: recorded in the rollout's history
        figures = {k: v for k, v in got.items() if k != "key"}
        self.store.audit_once(
            f"{r.id}:abort:{got['key']}",
            "rollout-engine",
            "rollout.abort_threshold",
            r.id,
            figures,
        )

    def _finish_abort(self, r: Rollout) -> None:
        """Apply (or, after a restart, finish) a saved abort intent's rollback."""
        intent = r.gates[INTENT]
        self._audit_abort(r)
        note = self._restore(
            r,
            intent.get("restore") or {},
            str(intent.get("actor") or f"rollout:{r.id}"),
            generations=intent.get("generations") or {},
        )
        r.note(time.time(), note)
        self._done(r)

    def _restore(
        self,
        r: Rollout,
        restore: Mapping[str, Any],
        actor: str,
        generations: Mapping[str, int] | None = None,
    ) -> str:
        """Point each device back at its previous desired bundle (grouped per bundle);
        a device whose desired generation moved past `generations` was restored already."""
        groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
        orphans = []
        done = 0
        rows = self.store.devices_by_id(sorted(restore)) if generations is not None else {}
        for device_id, prev in sorted(restore.items()):
            if not prev:
                orphans.append(device_id)
                continue
            rec = rows.get(device_id)
            if (
                generations is not None
                and rec is not None
                and rec.desired_generation > int(generations.get(device_id, 0))
            ):
                done += 1  # restored before a restart
                continue
            key = f"{prev.get('name')}@{prev.get('version')}#{prev.get('sequence')}"
            groups.setdefault(key, (dict(prev), []))[1].append(device_id)
        for prev, ids in groups.values():
            self.store.set_desired(ids, prev, actor=f"{actor} (rollback of {r.id})")
            done += len(ids)
            self._hint(ids, str(prev.get("name", "")), int(prev.get("sequence", 0) or 0), r.id)
        text = f"rolled back {done} device(s) to their previous bundle"
        if orphans:
            text += (
                f"; {len(orphans)} had no previous desired bundle and keep "
                f"{r.spec.bundle['name']} {r.spec.bundle['version']}: {', '.join(orphans[:10])}"
            )
        return text

    # ------------------------------------------------------------------ driver
    def kick(self) -> None:
        self._dirty = None
        if self._wake is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._wake.put_nowait("")

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()

            def changed(held: bool) -> None:
                if held:  # a new leader starts with a full pass
                    loop.call_soon_threadsafe(self.kick)

            self.lease = lease_for(
                self.store.engine.url.render_as_string(hide_password=False),
                "rollout-engine",
                on_change=changed,
            )
            self._task = loop.create_task(self._run())

    def _leads(self) -> bool:
        if self.lease is None:
            return True
        return self.lease.held and self.lease.epoch != self._deposed_epoch

    async def _run(self) -> None:
        # The fleet watch brings device changes from any writer (ingest in another
        # process too) and None when the plane shuts down: then the driver ends.
        token, queue = self.plane.watch.subscribe()
        self._wake = queue
        try:
            while True:
                try:
                    await self.tick()
                except Exception:  # a store outage must not kill the driver
                    log.exception("rollout driver pass failed; retrying")
                try:
                    item = await asyncio.wait_for(queue.get(), self.poll_s)
                except TimeoutError:
                    continue
                while True:  # coalesce a burst of changes into one pass
                    if item is None:
                        return
                    self._mark(item)
                    if queue.empty():
                        break
                    item = queue.get_nowait()
        finally:
            self.plane.watch.unsubscribe(token)
            if self.lease is not None:
                await asyncio.to_thread(self.lease.stop)
            if self._mqtt is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._mqtt.stop)

    def _mark(self, item: str) -> None:
        if not item or item.startswith("\x00"):  # a kick, or the watch queue overflowed
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.add(item)

    async def tick(self) -> None:
        """One driver pass over every active rollout."""
        if not self._leads():
            return
        async with self._lock:
            dirty, self._dirty = self._dirty, set()
            if time.monotonic() - self._last_full >= self.full_scan_s:
                dirty = None
            if dirty is None:
                self._last_full = time.monotonic()
            try:
                await self.plane.db(self._fenced_pass, dirty)
            except FencedError as exc:
                assert self.lease is not None
                self._deposed_epoch = self.lease.epoch
                self._dirty = None  # a later term starts with a full pass
                log.warning("rollout driver stands down: %s", exc)

    def _fenced_pass(self, dirty: set[str] | None) -> None:
        lease = self.lease
        if lease is None:
            self._pass(dirty)
            return
        with fenced(lease.name, lease.epoch, lease.lease_s):
            self._pass(dirty)

    def _pass(self, dirty: set[str] | None = None) -> None:
        """Drive every active rollout; check outcomes of `dirty` devices only (None: all)."""
        for rec in self.store.list_rollouts(limit=MAX_PAGE):
            if not self._leads():  # lost the lease mid-pass: leave the rest to the leader
                return
            r = Rollout.from_dicts(rec.id, rec.spec, rec.status)
            try:
                self._guarded(r, self._drive, r, rec.state, dirty)
            except StaleWriteError as exc:  # an operator changed it: the next pass reads it
                log.warning("rollout %s: %s", r.id, exc)
                self._dirty = None

    def _guarded(self, r: Rollout, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` with every store write refused once `r` was saved by someone else
        (an operator on any replica, or the driver) after `r.revision`."""
        with guarded(r.id, lambda: r.revision):
            return fn(*args)

    def _drive(self, r: Rollout, state: str, dirty: set[str] | None) -> None:
        intent = r.gates.get(INTENT)
        if isinstance(intent, dict) and intent.get("kind") == "abort":
            if self._finishes(r, intent):
                self._finish_abort(r)  # cut off between the abort's save and its rollback
            return
        if state not in ACTIVE_STATES:
            return
        before = r.to_status()
        self.step(r, dirty)
        if r.to_status() != before:
            self._save(r)

    def _finishes(self, r: Rollout, intent: dict[str, Any]) -> bool:
        """Whether the driver finishes a saved abort intent now: its own (an abort
        threshold's) at once; an operator's only once abandoned (the replica serving it
        stopped mid-way), claimed first by a save, so the operator's own writes from
        then on are refused and no device is restored twice."""
        if str(intent.get("actor") or "").startswith("rollout:"):
            return True
        if time.time() - float(intent.get("at") or 0.0) < ABANDONED_S:
            return False
        intent["claimed_at"] = time.time()
        self._save(r)
        return True

    def step(self, r: Rollout, dirty: set[str] | None = None) -> None:
        """Start, observe outcomes, gate, dispatch — until nothing changes this pass."""
        now = time.time()
        if r.state == "pending":
            r.start(now)
        if r.state == "running" and isinstance(r.gates.get(INTENT), dict):
            self._replay(r)  # a pass cut off between its side effect and its save
        if r.state == "running":
            self._admit_newcomers(r, dirty, now)
        offline_checked = False
        for _ in range(len(r.waves) + 1):
            checks = [
                (wave, device_id, retry.since(r, device_id, wave.dispatched_at))
                for wave, device_id in r.dispatched_devices()
                if (dirty is None or device_id in dirty)
                and wave.dispatched_at is not None
                and not retry.scheduled(r, device_id)
            ]
            devices, events = self._pass_reads([(d, since) for _, d, since in checks])
            for wave, device_id, since in checks:
                seen, hold = report_of(
                    events.get(device_id, ()), devices.get(device_id), r.spec.bundle, since
                )
                if seen is not None and not retry.on_failure(
                    r, device_id, *seen, now=now, u=random.random()
                ):
                    r.observe(device_id, seen[0], seen[1], now, detail=seen[2])
                elif hold is not None:
                    r.hold(device_id, hold.reason, hold.detail, hold.at, now)
                elif seen is None and device_id in wave.held:
                    r.release(device_id, now)
            if dirty is None and not offline_checked:  # once a pass
                offline_checked = True
                self._skip_offline(r, now, devices)
            self._retry(r, retry.due(r, now))
            r.evaluate(now)
            if self._over_threshold(r):
                return
            todo = r.next_dispatch()
            if todo is None:
                return
            if not wave_may_go(self.store, self.plane.home.trust, r, todo.index, now, self._asker):
                self._over_threshold(r)  # a soak decision may have crossed it
                return
            self._dispatch(r, todo.index, todo.device_ids)
            now = time.time()

    # ------------------------------------------------------------------ dynamic
    def _admit_newcomers(self, r: Rollout, dirty: set[str] | None, now: float) -> None:
        """Devices that joined the rollout's label selector join its current wave (a
        dispatched one points them at the bundle at once). Looked for on full passes
        only: the fleet watch announces every device that sent anything, so a pass on
        its changes would read the label's devices nearly every time."""
        if not r.spec.label_selector or dirty is not None:
            return
        ref = bundle_ref(r.spec.bundle)
        if ref is None:
            return
        plans = newcomers(self.store, r, ref)
        left = [p for p in plans if not p.receives]
        if left:
            r.gates.setdefault("left_out", {}).update({p.device_id: p.detail for p in left})
            record_dropped(self.store, left, ref, f"rollout:{r.id}")
            r.note(now, f"left out {len(left)} joining device(s) already newer")
        ids = sorted(p.device_id for p in plans if p.receives)
        if not ids:
            return
        if r.wave.dispatched_at is None:
            for d in ids:
                r.join(d, now)
            return
        self._join(r, ids)

    def _join(self, r: Rollout, device_ids: list[str]) -> None:
        """Point devices that joined a dispatched wave at the bundle, exactly once."""
        from cloud.push import PushError

        intent = self._pending(r, "join", r.current, device_ids)
        try:
            self._apply(r, intent, f"rollout:{r.id} (joined)")
        except PushError as exc:
            r.note(time.time(), f"joining {', '.join(device_ids[:10])} failed: {exc}")
            self._done(r)
            return
        for d in device_ids:
            r.join(d, float(intent["at"]), (intent.get("previous") or {}).get(d))
        self._done(r)

    def _skip_offline(self, r: Rollout, now: float, devices: Mapping[str, DeviceRecord]) -> None:
        """Apply the rollout's offline policy to the devices its waves wait for
        (`devices`: their rows, read for this pass)."""
        policy = offline_policy(r)
        if policy.kind == "wait":
            return
        for w, d in list(r.dispatched_devices()):
            if retry.scheduled(r, d):
                continue
            assert w.dispatched_at is not None
            since = retry.since(r, d, w.dispatched_at)
            rec = devices[d] if d in devices else self.store.get_device(d)
            reason = skip_reason(policy, rec, since, now)
            if reason is not None:
                r.skip(d, now, reason)

    def _pass_reads(
        self, checks: list[tuple[str, float]]
    ) -> tuple[dict[str, DeviceRecord], dict[str, list[EventRecord]]]:
        """The rows and recent ``update`` events of the devices this pass checks, each
        (device, since) asking for its events since `since`: one bulk read."""
        if not checks:
            return {}, {}
        ids = [d for d, _ in checks]
        oldest = min(since for _, since in checks) - CLOCK_SKEW_S
        start = dt.datetime.fromtimestamp(oldest, dt.UTC)
        return self.store.devices_by_id(ids), self.store.update_events_since(ids, start)

    def _over_threshold(self, r: Rollout) -> bool:
        """Abort `r` with rollback when its abort threshold is crossed."""
        decision = abort_due(r)
        if decision is None:
            return False
        self._abort(r, f"the abort threshold ({decision['text']})", True, decision)
        return True

    # Each dispatch or retry is applied exactly once across a plane restart: the intent
    # (what, to which devices, from which generation) is saved before any side effect,
    # replaying it skips devices whose desired state it already set, and the pass's
    # result is saved with the intent cleared.
    def _intend(
        self, r: Rollout, kind: str, index: int, device_ids: list[str], **extra: Any
    ) -> dict[str, Any]:
        previous: dict[str, Any] = {}
        generations: dict[str, int] = {}
        rows = self.store.devices_by_id(device_ids)
        for d in device_ids:
            rec = rows.get(d)
            previous[d] = rec.desired_bundle if rec is not None else None
            generations[d] = rec.desired_generation if rec is not None else 0
        intent = {
            "kind": kind,
            "wave": index,
            "at": time.time(),
            "device_ids": list(device_ids),
            "previous": previous,
            "generations": generations,
            **extra,
        }
        r.gates[INTENT] = intent
        self._save(r)
        return intent

    def _done(self, r: Rollout) -> None:
        r.gates.pop(INTENT, None)
        self._save(r)

    def _replay(self, r: Rollout) -> None:
        intent = r.gates[INTENT]
        if intent.get("kind") == "retry":
            self._retry(r, list(intent["device_ids"]))
        elif intent.get("kind") == "join":
            self._join(r, list(intent["device_ids"]))
        elif r.next_dispatch() is not None and r.current == intent.get("wave"):
            self._dispatch(r, r.current, list(intent["device_ids"]))
        else:  # the wave moved on (an operator's change): nothing left to apply
            self._done(r)

    def _apply(self, r: Rollout, intent: Mapping[str, Any], actor: str) -> PushResult | None:
        """Set the desired state of the intent's devices that do not have it yet and hint
        them; the others (set before a restart) keep their generation and get a hint."""
        from cloud.push import push

        b = r.spec.bundle
        todo: list[str] = []
        done: list[str] = []
        rows = self.store.devices_by_id(intent["device_ids"])
        for d in intent["device_ids"]:
            rec = rows.get(d)
            have = (rec.desired_bundle or {}) if rec is not None else {}
            applied = rec is not None and rec.desired_generation > int(
                intent["generations"].get(d, 0)
            )
            same = all(have.get(k) == b.get(k) for k in ("name", "version", "sequence"))
            (done if applied and same else todo).append(d)
        if done:
            self._hint(done, str(b["name"]), int(b.get("sequence", 0) or 0), r.id)
        if not todo:
            return None
        return push(
            self.plane.home,
            self.store,
            f"{b['name']}@{b['version']}",
            device_ids=todo,
            hint=self._hinter(),
            actor=actor,
            gate=GatePolicy.model_validate(b["gate"]) if b.get("gate") else None,
        )

    def _pending(self, r: Rollout, kind: str, index: int, device_ids: list[str]) -> dict[str, Any]:
        """The saved intent for this very step, or a new one (saved before it is applied)."""
        intent = r.gates.get(INTENT)
        if (
            isinstance(intent, dict)
            and intent.get("kind") == kind
            and intent.get("wave") == index
            and (kind == "wave" or intent.get("device_ids") == device_ids)
        ):
            return intent
        return self._intend(r, kind, index, device_ids)

    def _retry(self, r: Rollout, device_ids: list[str]) -> None:
        """Point devices whose retry is due at the bundle again (a new generation)."""
        from cloud.push import PushError

        if not device_ids:
            return
        intent = self._pending(r, "retry", r.current, device_ids)
        try:
            self._apply(r, intent, f"rollout:{r.id} (retry)")
        except PushError as exc:
            r.pause(time.time(), f"retry of {', '.join(device_ids[:10])} failed: {exc}")
            self._done(r)
            return
        retry.redispatched(r, device_ids, float(intent["at"]))
        self._done(r)

    def _dispatch(self, r: Rollout, index: int, device_ids: list[str]) -> None:
        from cloud.push import PushError

        intent = self._pending(r, "wave", index, device_ids)
        try:
            result = self._apply(r, intent, f"rollout:{r.id}")
        except PushError as exc:
            r.pause(time.time(), f"wave {index} could not be dispatched: {exc}")
            self._done(r)
            return
        r.dispatched(index, float(intent["at"]), intent["previous"])
        self._done(r)
        if result is not None and result.hint_failed:
            r.note(
                time.time(),
                f"wave {index}: no hint acknowledged for {len(result.hint_failed)} device(s); "
                "they converge when their agent polls the desired state",
            )

    # ------------------------------------------------------------------ MQTT hints
    def _hinter(self) -> Hinter | None:
        if not self.hints:
            return None
        if self._mqtt is None and time.monotonic() - self._mqtt_failed_at > MQTT_RETRY_S:
            self._mqtt = self._connect()
        mqtt = self._mqtt
        if mqtt is None:
            return None

        from cloud.mqtt import HINT_EXPIRY_S

        def hint(topic_name: str, payload: bytes) -> bool:
            sent = mqtt.publish(topic_name, payload, wait_s=HINT_WAIT_S, expiry_s=HINT_EXPIRY_S)
            return bool(sent)

        return hint

    def _connect(self) -> Any:
        """An MQTT client as the plane: the embedded broker, or the configured one."""
        from cloud.mqtt import CloudMqtt, CloudMqttError, CloudMqttSettings
        from cloud.push import PushError, broker_settings

        cfg = self.plane.config
        try:
            if cfg.broker_url:
                settings = broker_settings(self.plane.home, cfg.broker_url)
            else:
                settings = CloudMqttSettings(host=cfg.listen_host, port=cfg.embedded_broker_port)
            settings = dataclasses.replace(
                settings, client_id=f"edgeflux-rollouts-{uuid.uuid4().hex[:8]}"
            )
            client = CloudMqtt(settings, clean_session=True, mqtt5=True)
            client.start(timeout_s=3)
        except (CloudMqttError, PushError, OSError) as exc:
            self._mqtt_failed_at = time.monotonic()
            log.warning("rollout hints off for %.0f s (MQTT: %s)", MQTT_RETRY_S, exc)
            return None
        return client

    def _hint(self, device_ids: list[str], name: str, sequence: int, rollout_id: str) -> None:
        from cloud.mqtt import topic
        from protos import telemetry_pb2

        hint = self._hinter()
        if hint is None:
            return
        rows = self.store.devices_by_id(device_ids)
        for d in device_ids:
            rec = rows.get(d)
            msg = telemetry_pb2.UpdateHint(
                bundle_name=name,
                sequence=sequence,
                generation=rec.desired_generation if rec else 0,
                rollout_id=rollout_id,
            )
            with contextlib.suppress(Exception):
                hint(topic(d, "updates"), msg.SerializeToString())


def register(server: grpc.aio.Server, plane: Plane) -> list[str]:
    """Install the rollout handler and start its driver (needs the plane's event loop)."""
    service = RolloutService(plane)
    plane.extensions["rollouts"] = service
    service.start()
    return []
