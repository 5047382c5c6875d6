"""A small control plane for console tests: the real generated servicers over a real gRPC
server on a free loopback port (real sockets, a real WatchFleet stream), with an
in-memory fleet the test drives. It stands in for `cloud/server` where that is not
needed; the data is deterministic so snapshots are stable.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp

from protos import (
    admin_pb2,
    admin_pb2_grpc,
    attestation_pb2,
    attestation_pb2_grpc,
    common_pb2,
    router_pb2,
    router_pb2_grpc,
)
from protos.dsse import pae
from tests.servers import free_port

T0 = 1_790_000_000  # a fixed "now" (2026-09-21) so rendered times never change
SITES = ("lab", "plant", "yard")
STATES = ("COMMITTED", "COMMITTED", "COMMITTED", "HEALTH_WINDOW", "FAILED")


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.seconds = int(seconds)
    return t


def make_device(i: int) -> admin_pb2.Device:
    """Device number `i`, the same every run."""
    state = STATES[i % len(STATES)]
    d = admin_pb2.Device(
        id=f"arm-{i:05d}",
        labels={"site": SITES[i % 3], "role": "arm" if i % 2 == 0 else "cart"},
        online=i % 7 != 3,
        last_seen=ts(T0 - (i % 50) * 60),
        active_bundle=common_pb2.BundleRef(
            name="pendulum",
            version="1.1.0" if i % 4 else "1.0.0",
            sequence=2 if i % 4 else 1,
            policy_sha256=("ab" if i % 4 else "cd") * 32,
        ),
        update_state=state,
        update_reason="verify_failed" if state == "FAILED" else "",
        health=admin_pb2.DeviceHealth(
            loop_p50_ms=1.0 + (i % 5) * 0.1,
            loop_p99_ms=2.0 + (i % 13) * 0.37,
            deadline_miss_rate=(i % 9) / 1000,
            safety_interventions=i % 4,
            cpu_percent=20 + (i % 60),
            temperature_c=40 + (i % 25) * 0.5,
        ),
        runtime_version="0.1.0",
    )
    return d


def make_bundles() -> list[admin_pb2.Bundle]:
    out = []
    for seq, version, digest in ((1, "1.0.0", "cd"), (2, "1.1.0", "ab"), (3, "1.2.0", "ef")):
        out.append(
            admin_pb2.Bundle(
                ref=common_pb2.BundleRef(
                    name="pendulum", version=version, sequence=seq, policy_sha256=digest * 32
                ),
                size_bytes=48_000 + seq * 1024,
                signer_key_id=f"{seq:02d}" * 16,
                published_at=ts(T0 - (4 - seq) * 86400),
                target_path=f"pendulum/{version}.efb",
                attestation_verdict="attested" if seq != 1 else "",
            )
        )
    return out


@dataclass
class SimState:
    devices: dict[str, admin_pb2.Device] = field(default_factory=dict)
    bundles: list[admin_pb2.Bundle] = field(default_factory=make_bundles)
    rollouts: list[admin_pb2.CreateRolloutRequest] = field(default_factory=list)
    subscribers: list[queue.Queue[admin_pb2.FleetEvent | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    attestations: list[attestation_pb2.Attestation] = field(default_factory=list)
    fixed_rollouts: list[admin_pb2.Rollout] = field(default_factory=list)
    router_enabled: bool = True
    attestation_enabled: bool = True


class _Admin(admin_pb2_grpc.FleetAdminServiceServicer):
    def __init__(self, state: SimState) -> None:
        self.s = state

    def ListDevices(self, request, context):
        with self.s.lock:
            devs = sorted(self.s.devices.values(), key=lambda d: d.id)
        return admin_pb2.ListDevicesResponse(devices=devs, total=len(devs))

    def GetDevice(self, request, context):
        with self.s.lock:
            d = self.s.devices.get(request.id)
        if d is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.id!r}")
        return d

    def GetDeviceHistory(self, request, context):
        with self.s.lock:
            d = self.s.devices.get(request.id)
        if d is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.id!r}")
        n = int(d.id.rsplit("-", 1)[1])
        h = admin_pb2.DeviceHistory(id=d.id)
        for k in range(30):
            at = ts(T0 - (30 - k) * 60)
            h.loop_p99_ms.add(at=at, value=2.0 + ((k * 7 + n) % 11) * 0.3)
            h.deadline_miss_rate.add(at=at, value=((k * 3 + n) % 5) / 1000)
            h.safety_interventions.add(at=at, value=float(k // 10))
        for k, (state, reason) in enumerate(
            (
                ("STAGING", ""),
                ("SWITCHING", ""),
                ("COMMITTED", ""),
                (d.update_state, d.update_reason),
            )
        ):
            h.updates.add(
                at=ts(T0 - (4 - k) * 600), state=state, reason=reason, bundle=d.active_bundle
            )
        return h

    def WatchFleet(self, request, context) -> Iterator[admin_pb2.FleetEvent]:
        q: queue.Queue[admin_pb2.FleetEvent | None] = queue.Queue()
        with self.s.lock:
            snapshot = sorted(self.s.devices.values(), key=lambda d: d.id)
            self.s.subscribers.append(q)
        try:
            for d in snapshot:
                yield admin_pb2.FleetEvent(kind=admin_pb2.FleetEvent.KIND_SNAPSHOT, device=d)
            yield admin_pb2.FleetEvent(kind=admin_pb2.FleetEvent.KIND_SNAPSHOT_DONE)
            while context.is_active():
                try:
                    ev = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if ev is None:
                    return
                yield ev
        finally:
            with self.s.lock:
                if q in self.s.subscribers:
                    self.s.subscribers.remove(q)

    def ListBundles(self, request, context):
        return admin_pb2.ListBundlesResponse(bundles=self.s.bundles)

    def CreateRollout(self, request, context):
        with self.s.lock:
            self.s.rollouts.append(request)
            n = len(self.s.rollouts)
        return admin_pb2.Rollout(
            id=f"ro-{n}",
            bundle=request.bundle,
            state="running",
            waves=[admin_pb2.RolloutWave(index=0, device_ids=request.device_ids, state="running")],
        )

    def ListRollouts(self, request, context):
        return admin_pb2.ListRolloutsResponse(rollouts=self.s.fixed_rollouts)

    def GetRollout(self, request, context):
        for r in self.s.fixed_rollouts:
            if r.id == request.id:
                return r
        context.abort(grpc.StatusCode.NOT_FOUND, f"no rollout {request.id!r}")


def make_rollouts(devices: list[str]) -> list[admin_pb2.Rollout]:
    """A gated rollout waiting for approval after a passed soak, and an aborted one."""
    soak = (
        "soak passed: wave: deadline-miss rate 0.0040, 0.00 interventions/min (2/2 robot(s) "
        "reporting); not yet updated: deadline-miss rate 0.0035, 0.00 interventions/min "
        "(10/10 robot(s) reporting)"
    )
    bundle = common_pb2.BundleRef(name="pendulum", version="1.2.0", sequence=3)
    w0 = admin_pb2.RolloutWave(index=0, device_ids=devices[:2], state="succeeded", committed=2)
    w0.outcomes.add(device_id=devices[0], outcome="COMMITTED")
    w0.outcomes.add(device_id=devices[1], outcome="COMMITTED")
    w0.retries.add(device_id=devices[1], tries=2, outcome="FAILED", reason_code="DOWNLOAD_FAILED")
    w0.soak = soak
    w0.soak_verdict = "passed"
    for group, n, rate in (
        ("wave", 2, 0.004),
        ("before", 2, 0.0035),
        ("not yet updated", 10, 0.0035),
    ):
        w0.soak_figures.add(
            group=group,
            devices=n,
            reporting=n,
            miss_rate=rate,
            latency_p99_ms=2.4,
            errors_per_robot=0.0,
        )
    w0.joined.append(devices[1])
    w1 = admin_pb2.RolloutWave(
        index=1, device_ids=devices[2:6], state="pending", approval_required=True
    )
    w2 = admin_pb2.RolloutWave(index=2, device_ids=devices[6:], state="pending")
    gated = admin_pb2.Rollout(
        id="ro-00000000gate",
        bundle=bundle,
        state="running",
        waves=[w0, w1, w2],
        created_at=ts(T0 - 1800),
        created_by="operator:alice",
        reason="wave 1 waits for approval",
        attestation="valid: attested, expires 2026-12-20",
        max_tries=3,
        soak_s=600,
        abort_threshold=0.2,
        abort_min_robots=4,
        soak_thresholds="deadline-miss rate +0.01, interventions/min +1, loop p99 x1.5",
        offline_policy="wait",
    )
    bad = admin_pb2.RolloutWave(
        index=0, device_ids=devices[:2], state="failed", rolled_back=1, committed=1
    )
    bad.outcomes.add(
        device_id=devices[0],
        outcome="ROLLED_BACK",
        reason_code="HEALTH_WINDOW_FAILED",
        detail="12/100 tick slots missed their deadline",
    )
    bad.outcomes.add(device_id=devices[1], outcome="COMMITTED")
    aborted = admin_pb2.Rollout(
        id="ro-0000000abort",
        bundle=common_pb2.BundleRef(name="pendulum", version="1.1.0", sequence=2),
        state="aborted",
        waves=[bad, admin_pb2.RolloutWave(index=1, device_ids=devices[2:], state="cancelled")],
        created_at=ts(T0 - 86400),
        created_by="operator:bob",
        reason="aborted by the abort threshold; rolled back 2 device(s)",
        attestation="valid: attested",
        abort_threshold=0.3,
        abort="1/2 dispatched robot(s) failed or regressed (1 failed, 0 regressed in a soak) "
        "= 0.50 > abort threshold 0.3",
    )
    return [gated, aborted]


class _Attestation(attestation_pb2_grpc.AttestationServiceServicer):
    def __init__(self, state: SimState) -> None:
        self.s = state

    def _check(self, context) -> None:
        if not self.s.attestation_enabled:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "attestation service not enabled")

    def ListAttestations(self, request, context):
        self._check(context)
        return attestation_pb2.ListAttestationsResponse(attestations=self.s.attestations)

    def GetAttestation(self, request, context):
        self._check(context)
        for a in self.s.attestations:
            if a.subject_sha256 == request.subject_sha256:
                return a
        context.abort(grpc.StatusCode.NOT_FOUND, "no attestation for that subject")


class _Router(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, state: SimState) -> None:
        self.s = state

    def RouterStats(self, request, context):
        if not self.s.router_enabled:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "router not enabled")
        return router_pb2.RouterStatsResponse(
            backends=[
                router_pb2.BackendStats(
                    name="edge-policy",
                    tier=0,
                    concurrency_limit=8,
                    in_flight=3,
                    work_units_per_s=120,
                    usd_per_s=0.0,
                    healthy=True,
                    p95_latency_ms=4.2,
                ),
                router_pb2.BackendStats(
                    name="cloud-planner",
                    tier=1,
                    concurrency_limit=2.5,
                    in_flight=2,
                    work_units_per_s=14,
                    usd_per_s=0.0021,
                    healthy=False,
                    cooldown_remaining_s=3.5,
                    p95_latency_ms=180,
                ),
            ],
            budgets=[
                router_pb2.BudgetStats(scope="acme", limit_usd=50, used_usd=12.5, reserved_usd=1),
                router_pb2.BudgetStats(scope="acme/lab", limit_usd=10, used_usd=9.25),
            ],
            audit_records=1234,
            audit_tree_head="9f" * 32,
            recent_decisions=[
                router_pb2.RouteDecision(
                    decision_id="d-2",
                    at_unix_ms=T0 * 1000,
                    task_type="plan",
                    qos=router_pb2.QOS_CLASS_INTERACTIVE,
                    outcome=router_pb2.ROUTE_OUTCOME_REJECTED,
                    backend="cloud-planner",
                    scope="acme/lab",
                    reason="cooldown",
                ),
                router_pb2.RouteDecision(
                    decision_id="d-1",
                    at_unix_ms=(T0 - 5) * 1000,
                    task_type="verify",
                    qos=router_pb2.QOS_CLASS_SAFETY,
                    outcome=router_pb2.ROUTE_OUTCOME_OK,
                    backend="edge-policy",
                    cost_usd=0.0001,
                    latency_ms=3.9,
                    scope="acme/lab",
                ),
            ],
            audit_verification=router_pb2.AuditVerification(
                checked=True, ok=True, records_checked=1234, checked_at_unix_ms=T0 * 1000
            ),
        )


def make_attestation(
    key: Ed25519PrivateKey, subject: str, version: str, verdict: str = "attested"
) -> attestation_pb2.Attestation:
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "policy.onnx", "digest": {"sha256": subject}}],
        "predicateType": "https://edgeflux.dev/attestation/parity/v1",
        "predicate": {
            "teacher": "tdmpc2-pendulum",
            "execution_provider": "CPUExecutionProvider",
            "precision": "fp32",
            "verdict": verdict,
            "tasks": [
                {"task": "swingup", "episodes": 40, "mean_diff": -0.8, "p_holm": 0.003},
                {"task": "balance", "episodes": 40, "mean_diff": 0.2, "p_holm": 0.011},
            ],
            "gates": [
                {"gate": "power", "passed": True},
                {"gate": "numeric_parity", "passed": True},
            ],
        },
    }
    payload = json.dumps(statement, sort_keys=True).encode()
    ptype = "application/vnd.in-toto+json"
    sig = key.sign(pae(ptype, payload))
    env = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": ptype,
        "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
    }
    return attestation_pb2.Attestation(
        envelope=common_pb2.SignedEnvelope(dsse_json=json.dumps(env).encode()),
        subject_sha256=subject,
        verdict=verdict,
        issued_at=ts(T0 - 3600),
        expires_at=ts(T0 + 90 * 86400),
        bundle=common_pb2.BundleRef(name="pendulum", version=version),
    )


# A fixed key so snapshot output (which shows only verified/not) is reproducible.
ATTESTATION_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def write_attestation_key(directory: Path) -> Path:
    path = directory / "attestation.pub.pem"
    path.write_bytes(
        ATTESTATION_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


class SimPlane:
    """Start/stop a simulated plane on a fixed free port (restartable on the same port)."""

    def __init__(self, devices: int = 12, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.state = SimState()
        for i in range(devices):
            d = make_device(i)
            self.state.devices[d.id] = d
        self.state.fixed_rollouts = make_rollouts(sorted(self.state.devices))
        self.state.attestations = [
            make_attestation(ATTESTATION_KEY, "ab" * 32, "1.1.0"),
            make_attestation(ATTESTATION_KEY, "ef" * 32, "1.2.0", verdict="underpowered"),
        ]
        self._server: grpc.Server | None = None

    def start(self) -> SimPlane:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        admin_pb2_grpc.add_FleetAdminServiceServicer_to_server(_Admin(self.state), server)
        attestation_pb2_grpc.add_AttestationServiceServicer_to_server(
            _Attestation(self.state), server
        )
        router_pb2_grpc.add_RouterServiceServicer_to_server(_Router(self.state), server)
        bound = server.add_insecure_port(self.target)
        if bound != self.port:
            raise RuntimeError(f"could not bind {self.target}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        with self.state.lock:
            subs = list(self.state.subscribers)
        for q in subs:
            q.put(None)
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None

    def upsert(self, device: admin_pb2.Device) -> None:
        with self.state.lock:
            self.state.devices[device.id] = device
            subs = list(self.state.subscribers)
        ev = admin_pb2.FleetEvent(kind=admin_pb2.FleetEvent.KIND_UPSERT, device=device)
        for q in subs:
            q.put(ev)

    def remove(self, device_id: str) -> None:
        with self.state.lock:
            self.state.devices.pop(device_id, None)
            subs = list(self.state.subscribers)
        ev = admin_pb2.FleetEvent(
            kind=admin_pb2.FleetEvent.KIND_REMOVED, device=admin_pb2.Device(id=device_id)
        )
        for q in subs:
            q.put(ev)

    @property
    def watchers(self) -> int:
        with self.state.lock:
            return len(self.state.subscribers)
