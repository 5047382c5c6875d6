"""The console's only way out: a blocking client for the control plane's operator API.

Every call here blocks, so the app runs them in thread workers (`@work(thread=True)`)
and posts the results back as messages; nothing in this module touches Textual.
`FleetWatch` consumes the `WatchFleet` stream on its own reader thread and hands out
batches, so the UI gets one message per ~100 ms instead of one per event.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from protos import (
    admin_pb2,
    admin_pb2_grpc,
    attestation_pb2,
    attestation_pb2_grpc,
    common_pb2,
    router_pb2,
    router_pb2_grpc,
)
from protos.plane_target import plane_target
from tui.rows import DeviceRow

__all__ = [
    "AdminClient",
    "AdminError",
    "FleetWatch",
    "TlsFiles",
    "WatchBatch",
    "certificate_role",
    "device_row",
]

ROLLOUT_ACTIONS = {
    "approve": "ApproveRollout",
    "pause": "PauseRollout",
    "resume": "ResumeRollout",
    "abort": "AbortRollout",
}

# Codes that mean "this plane does not offer that service", not "you did something wrong".
NOT_AVAILABLE = {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE}


class AdminError(Exception):
    """A failed call to the control plane, with the gRPC status code kept."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def not_available(self) -> bool:
        return self.code in NOT_AVAILABLE


@dataclass(frozen=True)
class TlsFiles:
    """Operator certificate, its key and the fleet CA (PEM files), for mTLS."""

    cert: Path
    key: Path
    ca: Path
    server_name: str = ""  # override the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        data = {}
        for name in ("cert", "key", "ca"):
            path: Path = getattr(self, name)
            try:
                data[name] = path.read_bytes()
            except OSError as exc:
                raise AdminError(f"cannot read --{name} file {path}: {exc.strerror}") from exc
        return grpc.ssl_channel_credentials(
            root_certificates=data["ca"],
            private_key=data["key"],
            certificate_chain=data["cert"],
        )


def speaks_tls(host: str, port: int, timeout_s: float = 3.0) -> bool | None:
    """Whether the server at host:port answers a TLS handshake (None: nothing answers).

    A plaintext console cannot talk to an mTLS control plane: instead of retrying
    forever, the console asks once, before it starts, and says what is missing.
    """
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None
    try:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.do_handshake()
        return True
    except ssl.SSLError as exc:
        # An alert (certificate required, handshake failure) comes from a TLS server;
        # a plaintext server answers bytes that are no TLS record at all.
        return "alert" in str(exc).lower()
    except OSError:
        return False
    finally:
        raw.close()


def certificate_role(cert_pem: bytes) -> str | None:
    """The operator role a certificate names (subject OU=operator, title=admin|viewer).

    Matches the fleet PKI's naming (`cloud.pki`); None when the certificate is not an
    operator certificate. The server enforces roles; this only hides what would fail.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise AdminError(f"the --cert file is not a PEM certificate: {exc}") from exc
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    titles = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.TITLE)]
    if "operator" not in ous or not titles:
        return None
    return str(titles[0])


def device_row(dev: admin_pb2.Device) -> DeviceRow:
    """The wire `Device` as the store's row."""
    seen = dev.last_seen.seconds + dev.last_seen.nanos / 1e9 if dev.HasField("last_seen") else 0.0
    h = dev.health
    b = dev.active_bundle
    return DeviceRow(
        id=dev.id,
        labels=tuple(sorted(dev.labels.items())),
        online=dev.online,
        last_seen=seen,
        bundle_name=b.name,
        bundle_version=b.version,
        bundle_sequence=b.sequence,
        policy_sha256=b.policy_sha256,
        update_state=dev.update_state,
        update_reason=dev.update_reason,
        update_detail=dev.update_detail,
        loop_p99_ms=h.loop_p99_ms,
        deadline_miss_rate=h.deadline_miss_rate,
        safety_interventions=h.safety_interventions,
        cpu_percent=h.cpu_percent,
        temperature_c=h.temperature_c,
        revoked=dev.revoked,
        runtime_version=dev.runtime_version,
    )


@dataclass
class WatchBatch:
    """What the watch reader collected since the last batch."""

    snapshot: list[DeviceRow] | None = None  # a complete fleet (replace everything)
    changes: list[DeviceRow | str] | None = None  # upserts and removed ids, in order
    error: AdminError | None = None  # the stream ended with this error
    ended: bool = False


class FleetWatch:
    """One `WatchFleet` call read on a background thread; `next_batch` never blocks long."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._read, name="edgeflux-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        snapshot: list[DeviceRow] = []
        in_snapshot = True
        kinds = admin_pb2.FleetEvent
        try:
            for ev in self._call:
                if ev.kind == kinds.KIND_SNAPSHOT:
                    snapshot.append(device_row(ev.device))
                elif ev.kind == kinds.KIND_SNAPSHOT_DONE:
                    self._queue.put(("snapshot", snapshot))
                    snapshot, in_snapshot = [], False
                elif in_snapshot and ev.kind == kinds.KIND_UPSERT:
                    snapshot.append(device_row(ev.device))
                elif ev.kind == kinds.KIND_UPSERT:
                    self._queue.put(("change", device_row(ev.device)))
                elif ev.kind == kinds.KIND_REMOVED:
                    self._queue.put(("change", ev.device.id))
            self._queue.put(("end", None))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.CANCELLED:
                self._queue.put(("end", None))
            else:
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                self._queue.put(("error", AdminError(str(detail), code)))

    def next_batch(self, wait_s: float = 0.1, max_items: int = 5000) -> WatchBatch | None:
        """Everything that arrived within `wait_s` of the first item; None if nothing did."""
        try:
            kind, item = self._queue.get(timeout=wait_s)
        except queue.Empty:
            return None
        batch = WatchBatch()
        deadline = time.monotonic() + wait_s
        while True:
            if kind == "snapshot":
                batch.snapshot, batch.changes = item, None
            elif kind == "change":
                if batch.changes is None:
                    batch.changes = []
                batch.changes.append(item)
            elif kind == "error":
                batch.error, batch.ended = item, True
                return batch
            else:
                batch.ended = True
                return batch
            if batch.changes is not None and len(batch.changes) >= max_items:
                return batch
            remaining = deadline - time.monotonic()
            try:
                kind, item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                return batch

    def cancel(self) -> None:
        self._call.cancel()


class AdminClient:
    """Blocking calls to FleetAdminService, AttestationService and RouterService."""

    def __init__(self, target: str, tls: TlsFiles | None = None, timeout_s: float = 5.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.plaintext = tls is None
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # fail fast so the console shows "disconnected — retrying" promptly
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        plane = plane_target(target)  # one address or several replicas, round-robin
        options += plane.options
        if tls is not None:
            if tls.server_name:  # a name given explicitly wins over the first host's
                options = [o for o in options if o[0] != "grpc.ssl_target_name_override"]
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(plane.target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(plane.target, options=options)
        self.admin = admin_pb2_grpc.FleetAdminServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.attestation = attestation_pb2_grpc.AttestationServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.router = router_pb2_grpc.RouterServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, what: str) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            raise AdminError(f"{what}: {detail}", code) from exc

    # ---- fleet ---------------------------------------------------------------
    def watch(self, label_selector: str = "") -> FleetWatch:
        call = self.admin.WatchFleet(admin_pb2.WatchFleetRequest(label_selector=label_selector))
        return FleetWatch(call)

    def get_device(self, device_id: str) -> admin_pb2.Device:
        return self._call(  # type: ignore[no-any-return]
            self.admin.GetDevice, admin_pb2.GetDeviceRequest(id=device_id), "GetDevice"
        )

    def device_history(self, device_id: str, max_points: int = 120) -> admin_pb2.DeviceHistory:
        return self._call(  # type: ignore[no-any-return]
            self.admin.GetDeviceHistory,
            admin_pb2.GetDeviceHistoryRequest(id=device_id, max_points=max_points),
            "GetDeviceHistory",
        )

    # ---- bundles and pushes --------------------------------------------------
    def list_bundles(self) -> list[admin_pb2.Bundle]:
        out: list[admin_pb2.Bundle] = []
        token = ""
        for _ in range(100):  # a page cap, so a misbehaving server cannot loop us forever
            resp = self._call(
                self.admin.ListBundles,
                admin_pb2.ListBundlesRequest(
                    page=common_pb2.PageRequest(page_size=500, page_token=token)
                ),
                "ListBundles",
            )
            out.extend(resp.bundles)
            token = resp.next_page_token
            if not token:
                break
        return out

    def push(
        self,
        bundle: common_pb2.BundleRef,
        device_ids: list[str],
        label_selector: str = "",
    ) -> admin_pb2.Rollout:
        """Push `bundle` to exactly these devices (or the selector) as a one-wave rollout."""
        req = admin_pb2.CreateRolloutRequest(
            bundle=bundle,
            device_ids=device_ids,
            label_selector=label_selector,
            wave_fractions=[1.0],
        )
        return self._call(self.admin.CreateRollout, req, "CreateRollout")  # type: ignore[no-any-return]

    # ---- rollouts ------------------------------------------------------------
    def list_rollouts(self, limit: int = 200) -> list[admin_pb2.Rollout]:
        """The plane's rollouts, newest first (one page of at most `limit`)."""
        resp = self._call(
            self.admin.ListRollouts,
            admin_pb2.ListRolloutsRequest(page=common_pb2.PageRequest(page_size=limit)),
            "ListRollouts",
        )
        return list(resp.rollouts)

    def get_rollout(self, rollout_id: str) -> admin_pb2.Rollout:
        return self._call(  # type: ignore[no-any-return]
            self.admin.GetRollout, admin_pb2.RolloutId(id=rollout_id), "GetRollout"
        )

    def rollout_action(
        self, action: str, rollout_id: str, *, wave: int | None = None, rollback: bool = False
    ) -> admin_pb2.Rollout:
        """`action` is approve, pause, resume or abort; the plane checks the role."""
        rpc = ROLLOUT_ACTIONS.get(action)
        if rpc is None:
            raise AdminError(f"no rollout action {action!r}; expected {', '.join(ROLLOUT_ACTIONS)}")
        req = admin_pb2.RolloutId(id=rollout_id, rollback=rollback, wave=wave)
        return self._call(getattr(self.admin, rpc), req, rpc)  # type: ignore[no-any-return]

    # ---- attestations and routing --------------------------------------------
    def list_attestations(self) -> list[attestation_pb2.Attestation]:
        resp = self._call(
            self.attestation.ListAttestations,
            attestation_pb2.ListAttestationsRequest(page=common_pb2.PageRequest(page_size=500)),
            "ListAttestations",
        )
        return list(resp.attestations)

    def get_attestation(self, subject_sha256: str) -> attestation_pb2.Attestation:
        return self._call(  # type: ignore[no-any-return]
            self.attestation.GetAttestation,
            attestation_pb2.GetAttestationRequest(subject_sha256=subject_sha256),
            "GetAttestation",
        )

    def router_stats(self) -> router_pb2.RouterStatsResponse:
        return self._call(  # type: ignore[no-any-return]
            self.router.RouterStats, router_pb2.RouterStatsRequest(), "RouterStats"
        )


def iter_batches(watch: FleetWatch, stop: threading.Event) -> Iterator[WatchBatch]:
    """Batches from `watch` until it ends or `stop` is set."""
    while not stop.is_set():
        batch = watch.next_batch()
        if batch is None:
            continue
        yield batch
        if batch.ended:
            return
