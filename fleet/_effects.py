"""The production side effects of the update state machine on a robot.

Each :class:`~fleet.update.UpdateEffects` method maps one step onto the real
components: TUF (:mod:`fleet.tuf_client`) and the control plane's DeviceService over
gRPC (mTLS, device identity), bundle unpacking (:mod:`runtime.bundle`), parity
attestation (:mod:`fleet.attestation`) and the runtime's ``RuntimeControl`` socket,
which verifies the bundle (once per update) and judges its health. Every failure
becomes an :class:`~fleet.update.UpdateError` with a reason code; the runtime's own
code and detail come through its socket intact.

The desired-state document is a DSSE envelope signed by the control plane's director
key (Ed25519, ``<trust>/director.pub`` on the robot); the agent verifies it here with
`cryptography` — payloadType checked, only the verified bytes parsed — and requires
it to name this device, the hinted bundle, an unexpired validity, and the very TUF
target (name, sequence, hash) the refresh resolved.

gRPC first: each update (and each desired-state poll) starts with
``GetDesiredState`` under `grpc_probe_timeout_s`. When the plane's gRPC port is
unreachable (UNAVAILABLE or no answer in time) and the broker is, that update
fetches its desired state, TUF metadata, bundle and parity attestation over MQTT in
blocks (:mod:`fleet.mqtt_fetch`) — verified exactly as over gRPC — and says so in the
log and in its update events; the next update tries gRPC again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fleet.attestation import UNREACHABLE as _UNREACHABLE
from fleet.attestation import grpc_fetcher, grpc_fetcher_with_fallback
from fleet.bandwidth import Pacer
from fleet.mqtt_fetch import MqttBlockClient, MqttFetcher, MqttFetchError, attestation_fetcher
from fleet.tuf_client import DiskFullError, GrpcFetcher, TufClient, TufClientError, TufView
from fleet.update import Reason, ShadowResult, StagedBundle, TargetInfo, UpdateError
from protos import device_pb2, device_pb2_grpc
from protos.dsse import Envelope, EnvelopeFormatError
from protos.lifecycle import Failure, RuntimeState
from protos.plane_target import plane_target
from runtime.desired_state import (
    PAYLOAD_TYPE,
    SCHEMA,
    BundleRef,
    DesiredState,
    DesiredStateError,
)
from runtime.maintenance_window import MaintenanceWindow

if TYPE_CHECKING:
    from fleet.agent import Agent

__all__ = ["DESIRED_STATE_PAYLOAD_TYPE", "RobotEffects", "robot_effects", "verify_desired_state"]

log = logging.getLogger(__name__)

DESIRED_STATE_PAYLOAD_TYPE = PAYLOAD_TYPE
MAX_ENVELOPE_BYTES = 64 * 1024


def verify_desired_state(
    raw: bytes, director: ed25519.Ed25519PublicKey, device_id: str, now: dt.datetime
) -> DesiredState:
    """The verified desired-state document, or UpdateError(DESIRED_STATE_INVALID)."""

    def bad(why: str) -> UpdateError:
        return UpdateError(Reason.DESIRED_STATE_INVALID, f"desired state {why}")

    try:
        env = Envelope.from_json(raw, max_bytes=MAX_ENVELOPE_BYTES)
    except EnvelopeFormatError as exc:
        raise bad(f"is not a DSSE envelope: {exc}") from exc
    if env.payload_type != DESIRED_STATE_PAYLOAD_TYPE:
        raise bad(f"has payloadType {env.payload_type[:80]!r}")
    if not env.keys_that_verify([("director", director)]):
        raise bad("is not signed by the director key in the trust store")
    try:
        doc = DesiredState.parse(env.payload)  # only the verified bytes are parsed
    except DesiredStateError as exc:
        raise bad(f"payload is not a {SCHEMA} document: {exc}") from exc
    if doc.device_id != device_id:
        raise bad(f"names device {doc.device_id[:64]!r}, not {device_id!r}")
    if doc.expires <= now:
        raise bad(f"expired at {doc.expires.isoformat()}")
    return doc


class RobotEffects:
    """UpdateEffects over TUF + DeviceService + RuntimeControl for one agent."""

    def __init__(self, agent: Agent) -> None:
        from runtime.control_client import RuntimeControlClient  # the runtime's client

        self.agent = agent
        c = agent.config
        layout = agent.layout
        ca, crt, key = c.tls_paths(layout)
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=crt.read_bytes(),
        )
        plane = plane_target(c.grpc_target)  # one address or replicas, round-robin
        # A plane that was unreachable is tried again within seconds (gRPC's default
        # back-off grows to two minutes), so updates return to gRPC soon after it is back.
        options = [*plane.options, ("grpc.max_reconnect_backoff_ms", 10_000)]
        self.channel = grpc.secure_channel(plane.target, creds, options=options)
        self.stub = device_pb2_grpc.DeviceServiceStub(self.channel)  # type: ignore[no-untyped-call]
        pacer = Pacer(
            c.download_max_bytes_per_s,
            (lambda: len(agent.spool) > 0) if c.download_low_priority else None,
        )
        self.tuf = TufClient(
            layout.agent_state,
            layout.etc / c.tuf_root_file,
            GrpcFetcher(self.stub.FetchFile, pacer=pacer),
        )
        self.mqtt_blocks: MqttBlockClient | None = None
        self.mqtt_tuf: TufClient | None = None
        if c.mqtt_fetch:
            self.mqtt_blocks = MqttBlockClient(
                agent.transport,
                agent.device_id,
                block_bytes=c.mqtt_fetch_block_bytes,
                timeout_s=c.mqtt_fetch_timeout_s,
                retries=c.mqtt_fetch_retries,
            )
            self.mqtt_tuf = TufClient(
                layout.agent_state,
                layout.etc / c.tuf_root_file,
                MqttFetcher(self.mqtt_blocks, pacer=pacer),
            )
        self.via_mqtt = False
        """Whether the update in progress fetches over MQTT (gRPC was unreachable)."""
        self._why_mqtt = ""
        self.director_path = layout.etc / c.director_key_file
        self.runtime = RuntimeControlClient(layout.runtime_socket, timeout_s=60.0)
        # Status is also asked from the MQTT thread (hint checks): never block it long.
        self.runtime_status = RuntimeControlClient(layout.runtime_socket, timeout_s=2.0)
        self.staging = layout.agent_state / "staging"
        self._view: TufView | None = None
        self._target_custom: dict[str, Any] = {}

    # ---- helpers

    def _director(self) -> ed25519.Ed25519PublicKey:
        try:
            key = serialization.load_pem_public_key(self.director_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise UpdateError(
                Reason.DESIRED_STATE_INVALID,
                f"cannot load the director key {self.director_path}: {exc}",
            ) from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise UpdateError(
                Reason.DESIRED_STATE_INVALID, f"{self.director_path} is not an Ed25519 key"
            )
        return key

    def _rt(self, reason: Reason, fn: Any, *args: Any, **kw: Any) -> Any:
        """Call the runtime; its failure keeps the runtime's own code where it gave one
        that says more than `reason` (the step's generic one)."""
        from runtime.control_client import RuntimeControlError

        try:
            return fn(*args, **kw)
        except RuntimeControlError as exc:
            f = exc.failure
            generic = (Reason.RUNTIME_ERROR, Reason.WRONG_STATE)
            raise UpdateError(reason if f.code in generic else f.code, f.detail) from exc

    # ---- UpdateEffects

    def installed_sequence(self, bundle_name: str) -> int:
        try:
            status = self.runtime_status.status()
        except Exception:
            return 0
        return int(status.anti_rollback.get(bundle_name, 0))

    def _desired_envelope(self, timeout_s: float) -> bytes:
        """The desired-state envelope over gRPC, or over MQTT when gRPC is unreachable
        (which also decides the transport of the update that follows)."""
        c = self.agent.config
        try:
            reply = self.stub.GetDesiredState(
                device_pb2.GetDesiredStateRequest(),
                timeout=min(timeout_s, c.grpc_probe_timeout_s),
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if self.mqtt_blocks is None or code not in _UNREACHABLE:
                raise
            why = f"the plane's gRPC endpoint {c.grpc_target} is unreachable ({code.name})"
            if not self.via_mqtt:
                log.warning("%s: fetching updates over MQTT", why)
            self.via_mqtt, self._why_mqtt = True, why
            try:
                return self.mqtt_blocks.fetch_whole("desired", "", MAX_ENVELOPE_BYTES)
            except MqttFetchError as mexc:
                raise UpdateError(Reason.PLANE_UNREACHABLE, f"{why}; over MQTT: {mexc}") from mexc
        if self.via_mqtt:
            log.warning("the plane's gRPC endpoint %s answers again: back to gRPC", c.grpc_target)
        self.via_mqtt, self._why_mqtt = False, ""
        return bytes(reply.envelope.dsse_json)

    def transport_note(self) -> str:
        """For the update's events: which transport fetched it, when not gRPC."""
        if not self.via_mqtt:
            return ""
        note = f"fetched over MQTT: {self._why_mqtt}"
        if self.mqtt_blocks is not None:
            n = self.mqtt_blocks.counters
            note += f" ({n['blocks']} blocks, {n['bytes']} bytes, {n['retries']} retried so far)"
        return note

    def desired_bundle(self, timeout_s: float) -> tuple[str, int, int] | None:
        """(name, sequence, generation) of the verified desired state, None if none."""
        doc = verify_desired_state(
            self._desired_envelope(timeout_s),
            self._director(),
            self.agent.device_id,
            dt.datetime.now(dt.UTC),
        )
        if doc.bundle is None:
            return None
        return doc.bundle.name, doc.bundle.sequence, doc.generation

    def desired_windows(self, target: TargetInfo, timeout_s: float) -> str:
        """The maintenance windows the verified desired state now gives `target` (as
        ``TargetInfo.windows``); UpdateError when it names another bundle."""
        doc = verify_desired_state(
            self._desired_envelope(timeout_s),
            self._director(),
            self.agent.device_id,
            dt.datetime.now(dt.UTC),
        )
        b = doc.bundle
        if b is None or b.name != target.name or b.sequence != target.sequence:
            raise UpdateError(
                Reason.DESIRED_STATE_MISMATCH,
                f"the signed desired state now wants {b.key() if b else 'no bundle'}, not "
                f"{target.name} sequence {target.sequence}; the held update is dropped",
            )
        return _windows_json(b.gate.windows) if b.gate else ""

    def refresh(self, bundle_name: str, timeout_s: float) -> TargetInfo:
        try:  # first: it decides whether this update goes over gRPC or MQTT
            envelope = self._desired_envelope(min(timeout_s, 30.0))
        except grpc.RpcError as exc:
            reason = (
                Reason.PLANE_UNREACHABLE
                if exc.code() in _UNREACHABLE
                else Reason.DESIRED_STATE_INVALID
            )
            raise UpdateError(reason, f"GetDesiredState failed: {exc.code()}") from exc
        tuf = self.mqtt_tuf if self.via_mqtt and self.mqtt_tuf is not None else self.tuf
        try:
            view = tuf.refresh()
        except TufClientError as exc:
            raise UpdateError(Reason.TUF_REFRESH_FAILED, str(exc)) from exc
        doc = verify_desired_state(
            envelope,
            self._director(),
            self.agent.device_id,
            dt.datetime.now(dt.UTC),
        )
        bundle = doc.bundle
        if bundle is None or bundle.name != bundle_name:
            raise UpdateError(
                Reason.DESIRED_STATE_MISMATCH,
                f"the hint names {bundle_name!r} but the signed desired state wants "
                f"{bundle.name if bundle else None!r}",
            )
        path = bundle.target_path()
        target = view.target(path)
        if target is None:
            raise UpdateError(Reason.TARGET_UNKNOWN, f"TUF has no target {path}")
        custom = target.custom
        try:  # the plane signs the bundle's reference into the target's custom fields
            signed = BundleRef.from_dict(custom)
        except DesiredStateError as exc:
            raise UpdateError(Reason.DESIRED_STATE_MISMATCH, f"TUF target {path}: {exc}") from exc
        if signed is None or signed.name != bundle_name or signed.sequence != bundle.sequence:
            raise UpdateError(
                Reason.DESIRED_STATE_MISMATCH,
                f"TUF target {path} is {custom.get('name')} sequence {custom.get('sequence')}, "
                f"desired state says {bundle_name} sequence {bundle.sequence}",
            )
        if bundle.sha256 and bundle.sha256 != target.sha256:
            raise UpdateError(Reason.DESIRED_STATE_MISMATCH, f"{path}: sha256 differs from TUF")
        self._view = view
        self._target_custom = dict(custom)
        return TargetInfo(
            name=bundle_name,
            version=signed.version or bundle.version,
            sequence=signed.sequence,
            target_path=path,
            length=target.length,
            sha256=target.sha256,
            max_action_divergence=bundle.gate.max_action_divergence if bundle.gate else None,
            windows=_windows_json(bundle.gate.windows) if bundle.gate else "",
        )

    def download(self, target: TargetInfo, timeout_s: float) -> Path:
        if self._view is None:
            raise UpdateError(Reason.DOWNLOAD_FAILED, "no TUF refresh in this process")
        t = self._view.target(target.target_path)
        if t is None or t.sha256 != target.sha256:
            raise UpdateError(Reason.TARGET_UNKNOWN, f"{target.target_path} changed under us")
        try:
            return self._view.download(t, self.agent.config.download_free_margin_bytes)
        except DiskFullError as exc:
            raise UpdateError(Reason.DISK_FULL, str(exc)) from exc
        except TufClientError as exc:
            raise UpdateError(Reason.DOWNLOAD_FAILED, str(exc)) from exc

    def stage(self, target: TargetInfo, download: Path, timeout_s: float) -> StagedBundle:
        from runtime.bundle import BundleError, unpack_bundle

        self.staging.mkdir(parents=True, exist_ok=True)
        dest = self.staging / f"{target.name}-{target.sha256[:16]}"
        if dest.exists():
            shutil.rmtree(dest)
        try:
            # TUF checked the archive's hash; its signed length caps what extraction
            # may write. The runtime verifies the bundle, once, on the copy it will run.
            unpack_bundle(download, dest, max_total_bytes=target.length)
        except BundleError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise UpdateError(Reason.BUNDLE_INVALID, str(exc)) from exc
        reply = self._rt(Reason.STAGE_FAILED, self.runtime.stage, dest)
        b = reply.staged.bundle
        return StagedBundle(
            name=b.name,
            version=b.version,
            sequence=int(b.sequence),
            policy_sha256=b.policy_sha256,
            root_digest=b.oms_root_digest,
            slot=reply.staged.slot,
        )

    def _attestation_fetch(self) -> Callable[[str], bytes | None]:
        """Where this update's parity attestation comes from: over MQTT when the update
        does, and when gRPC is unreachable now (an agent restarted since the refresh)."""
        if self.mqtt_blocks is None:
            return grpc_fetcher(self.channel)
        over_mqtt = attestation_fetcher(self.mqtt_blocks)
        if self.via_mqtt:
            return over_mqtt
        timeout_s = self.agent.config.grpc_probe_timeout_s
        return grpc_fetcher_with_fallback(self.channel, over_mqtt, timeout_s)

    def attest(self, target: TargetInfo, staged: StagedBundle, timeout_s: float) -> None:
        from fleet.attestation import AttestationPolicy, check_activation
        from runtime.trust import TrustStore

        policy = AttestationPolicy(self.agent.config.require_parity_attestation)
        # Bound to the digests the runtime verified of the bytes that will run, not to
        # what the repository's metadata claims; the same check whatever the transport.
        decision = check_activation(
            policy,
            policy_sha256=staged.policy_sha256,
            root_digest=staged.root_digest,
            fetch=self._attestation_fetch(),
            trusted_keys={
                k: v
                for k, v in TrustStore(self.agent.layout.trust).public_keys("attestation").items()
                if isinstance(v, ed25519.Ed25519PublicKey)
            },
        )
        if not decision.allowed:
            raise UpdateError(Reason.ATTESTATION_INVALID, f"{decision.reason}: {decision.message}")

    def shadow(self, timeout_s: float) -> ShadowResult:
        r = self._rt(
            Reason.SHADOW_FAILED, self.runtime.shadow, self.agent.config.shadow_ticks, timeout_s
        )
        return ShadowResult(
            ticks=int(r.ticks),
            divergence_max=float(r.divergence_max),
            nan_rate=float(r.nan_rate),
            latency_p99_ms=float(r.latency_p99_ms),
            envelope_violations=int(r.envelope_violations),
        )

    def switch(self, timeout_s: float) -> None:
        # The runtime swaps only on a tick where the robot adapter's is_safe_to_switch()
        # holds; one that never gets a safe tick fails with UNSAFE_TO_SWITCH.
        self._rt(Reason.ACTIVATE_FAILED, self.runtime.activate, 0, timeout_s)

    def health_window(self, timeout_s: float) -> None:
        if self.agent.config.health_window_ticks == 0:
            return  # configured off: commit right after the switch
        status = self._rt(
            Reason.HEALTH_WINDOW_FAILED,
            self.runtime.health_window,
            self.agent.config.health_window_ticks,
            timeout_s,
        )
        if status.state != RuntimeState.ACTIVATED:
            # The runtime judged the candidate unhealthy and already switched back.
            f = status.failure
            active = status.active.bundle
            raise UpdateError(
                Reason.parse(f.code, Reason.HEALTH_WINDOW_FAILED),
                f"{f.detail or 'the health window failed'}; the runtime rolled back to "
                f"{active.name} {active.version}",
            )

    def commit(self, timeout_s: float) -> None:
        from runtime.control_client import RuntimeControlError

        try:
            self.runtime.commit()
        except RuntimeControlError as exc:
            # Idempotent after a restart: already committed means done.
            record = self.agent.runner.store.load() if self.agent.runner else None
            if record is not None and record.target:
                t = record.target_info()
                if self.installed_sequence(t.name) >= t.sequence:
                    return
            raise UpdateError(Reason.COMMIT_FAILED, exc.failure.detail) from exc

    def rollback(self, failure: Failure, timeout_s: float) -> None:
        from runtime.control_client import RuntimeControlError

        try:
            self.runtime.rollback(failure)
        except RuntimeControlError as exc:
            # "nothing to roll back": the candidate is not active (never switched, or
            # the runtime already reverted it); the old bundle runs.
            log.info("rollback: %s", exc)


def _windows_json(windows: tuple[MaintenanceWindow, ...]) -> str:
    """The desired state's maintenance windows as the update record keeps them."""
    if not windows:
        return ""
    return json.dumps([w.to_dict() for w in windows], sort_keys=True)


def robot_effects(agent: Agent) -> RobotEffects:
    return RobotEffects(agent)
