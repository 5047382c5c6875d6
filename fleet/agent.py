"""The fleet agent — the composition root on the robot.

Wires the MQTT transport, the disk spool and its pump, telemetry sampling and the
update state machine. Usage (what ``edgeflux agent run --root DIR`` does)::

    layout = RobotLayout.at("/")
    agent = Agent(layout, load_agent_config(layout))
    agent.run()            # until SIGTERM / Ctrl-C

Threads: the MQTT network thread (fleet.mqtt), the main loop here (pump the spool,
sample, batch), and one update worker (resume a persisted update after a restart,
then act on rate-limited hints). Telemetry and events go through the spool, never
straight to the wire, so nothing is lost while offline or across restarts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from fleet._hints import Hint, HintGate
from fleet.config import AgentConfig
from fleet.mqtt import MqttSettings, MqttTransport, TlsFiles, topic
from fleet.spool import ClassBudget, Spool, SpoolPump
from fleet.telemetry import HostSampler, TelemetryBatcher, make_point
from fleet.update import (
    Reason,
    ShadowThresholds,
    UpdateEffects,
    UpdateError,
    UpdateRecord,
    UpdateRunner,
    UpdateState,
    UpdateStateFile,
)
from fleet.update_hold import SwitchHold
from fleet.update_lock import LOCK_DIR, UpdateLocks
from protos import common_pb2, runtime_control_pb2, telemetry_pb2
from runtime.layout import RobotLayout

__all__ = ["Agent", "EffectsFactory"]

log = logging.getLogger(__name__)

EffectsFactory = Callable[["Agent"], UpdateEffects]


def _fault_pause_hook() -> Callable[[UpdateState], None] | None:
    """Fault injection for the kill -9 tests: with ``EDGEFLUX_FAULT_AGENT_PAUSE_AT=STATE``
    the update worker stops for good right after persisting STATE (the test then
    SIGKILLs the process). Unset in production: no hook at all."""
    target = os.environ.get("EDGEFLUX_FAULT_AGENT_PAUSE_AT")
    if not target:
        return None

    def pause(state: UpdateState) -> None:
        if state.value == target:
            log.warning("fault injection: update worker paused in %s", state.value)
            threading.Event().wait()

    return pause


class Agent:
    def __init__(
        self,
        layout: RobotLayout,
        config: AgentConfig,
        *,
        effects: EffectsFactory | None = None,
        runtime_status: Callable[[], runtime_control_pb2.RuntimeStatus | None] | None = None,
    ) -> None:
        self.layout = layout
        self.config = config
        layout.agent_state.mkdir(parents=True, exist_ok=True)
        c = config
        self.device_id = c.device_id
        self.spool = Spool(
            layout.agent_state / "spool.db",
            {
                "telemetry": ClassBudget(c.spool_telemetry_max_bytes, c.spool_telemetry_ttl_s),
                "events": ClassBudget(c.spool_events_max_bytes, c.spool_events_ttl_s),
            },
        )
        tls = None
        if c.mqtt_tls:
            ca, crt, key = c.tls_paths(layout)
            tls = TlsFiles(ca, crt, key)
        self._state_topic = topic(self.device_id, "state")
        self.transport = MqttTransport(
            MqttSettings(
                host=c.mqtt_host,
                port=c.mqtt_port,
                tls=tls,
                keepalive_s=c.keepalive_s,
                reconnect_base_s=c.reconnect_base_s,
                reconnect_cap_s=c.reconnect_cap_s,
                max_inflight=c.inflight_window,
                max_payload_bytes=c.max_payload_bytes,
                mqtt5=c.mqtt5,
                session_expiry_s=c.mqtt_session_expiry_s,
            ),
            self.device_id,
            will=(self._state_topic, self._state(False)),
            on_connected=self._announce,
        )
        self.pump = SpoolPump(self.spool, self.transport, window=c.inflight_window)
        self.batcher = TelemetryBatcher(
            self.spool, self.device_id, topic(self.device_id, "telemetry")
        )
        self.host = HostSampler(layout.var if layout.var.exists() else layout.root)
        self._runtime_status = runtime_status or self._default_runtime_status
        self._runtime_client: Any = None
        self._stop = threading.Event()
        self._hint_ready = threading.Event()
        self._update_state = UpdateStateFile(layout.agent_state / "update.json")
        self.runner: UpdateRunner | None = None
        self._effects: UpdateEffects | None = None
        if effects is not None:
            try:
                self._effects = effects(self)
            except Exception as exc:  # telemetry must run even when updates cannot
                log.error("update path unavailable, running telemetry only: %s", exc)
        self.hints = HintGate(self._installed_sequence, c.hint_min_interval_s, time.monotonic)
        if self._effects is not None:
            self.runner = UpdateRunner(
                self._update_state,
                self._effects,
                shadow_thresholds=ShadowThresholds(
                    divergence_max=c.shadow_divergence_max,
                    latency_p99_ms_max=c.shadow_latency_p99_ms_max,
                ),
                on_event=self._on_update_event,
                on_persisted=_fault_pause_hook(),
                hold=SwitchHold(
                    UpdateLocks(layout.agent_state / LOCK_DIR),
                    poll_s=c.update_lock_poll_s,
                    stop=self._stop,
                ),
                recheck_windows=getattr(self._effects, "desired_windows", None),
                recheck_s=c.desired_state_poll_s or 300.0,
            )
        self.transport.subscribe(topic(self.device_id, "updates"), self._on_hint)

    # ---- presence

    def _state(self, online: bool) -> bytes:
        st = telemetry_pb2.DeviceState(device_id=self.device_id, online=online)
        st.at.FromDatetime(dt.datetime.now(dt.UTC))
        return st.SerializeToString()

    def _announce(self) -> None:
        # Retained presence is latest-value-only, so it skips the spool.
        self.transport.publish(self._state_topic, self._state(True), retain=True)

    # ---- runtime

    def _default_runtime_status(self) -> runtime_control_pb2.RuntimeStatus | None:
        sock = self.layout.runtime_socket
        if not sock.exists():
            return None
        try:
            if self._runtime_client is None:
                from runtime.control_client import RuntimeControlClient

                self._runtime_client = RuntimeControlClient(sock, timeout_s=2.0)
            status: runtime_control_pb2.RuntimeStatus = self._runtime_client.status()
            return status
        except Exception as exc:  # the runtime may be restarting; telemetry goes on
            log.debug("runtime status unavailable: %s", exc)
            return None

    def _installed_sequence(self, bundle_name: str) -> int:
        if self._effects is not None:
            return self._effects.installed_sequence(bundle_name)
        return 0

    # ---- events and hints

    def emit_event(
        self,
        kind: str,
        state: str,
        reason: str,
        detail: str = "",
        bundle: common_pb2.BundleRef | None = None,
    ) -> int:
        def build(sequence: int) -> bytes:
            ev = telemetry_pb2.Event(
                device_id=self.device_id,
                sequence=sequence,
                kind=kind,
                state=state,
                reason_code=reason,
                detail=detail[:2000],
            )
            ev.at.FromDatetime(dt.datetime.now(dt.UTC))
            if bundle is not None:
                ev.bundle.CopyFrom(bundle)
            return ev.SerializeToString()

        return self.spool.put("events", topic(self.device_id, "events"), build)

    def _on_update_event(
        self, record: UpdateRecord, state: UpdateState, reason: Reason, detail: str
    ) -> None:
        bundle = None
        if record.target:
            t = record.target_info()
            bundle = common_pb2.BundleRef(name=t.name, version=t.version, sequence=t.sequence)
        elif record.bundle_name:
            bundle = common_pb2.BundleRef(name=record.bundle_name)
        self.emit_event("update", state.value, reason.value, detail, bundle)

    def _on_hint(self, topic_name: str, payload: bytes) -> None:
        hint = self.hints.offer(payload)
        if hint is None:
            log.warning("ignored an update hint (%s)", dict(self.hints.counters))
            return
        self._hint_ready.set()

    # ---- loops

    def _poll_desired(self) -> None:
        """Offer the signed desired state as if it were a hint (same gate, same checks),
        so a robot that missed its hint still converges."""
        poll = getattr(self._effects, "desired_bundle", None)
        if poll is None:
            return
        try:
            wanted = poll(10.0)
        except Exception as exc:  # the plane may be unreachable; try at the next poll
            log.info("desired-state poll failed: %s", exc)
            return
        if wanted is None:
            return
        name, sequence, generation = wanted
        msg = telemetry_pb2.UpdateHint(
            bundle_name=name, sequence=sequence, generation=generation, rollout_id="poll"
        )
        if self.hints.offer(msg.SerializeToString()) is not None:
            self._hint_ready.set()

    def _signed(self, hint: Hint) -> Hint | None:
        """The hint replaced by what the signed desired state says (bundle, sequence,
        generation): a hint only says "look now", its fields decide nothing. None when
        the desired state cannot be read or names no bundle (the next poll retries)."""
        poll = getattr(self._effects, "desired_bundle", None)
        if poll is None:  # effects without a desired-state source: the hint as is
            return hint
        try:
            wanted = poll(10.0)
        except Exception as exc:
            log.info("desired-state check for a hint failed: %s", exc)
            return None
        if wanted is None:
            return None
        name, sequence, generation = wanted
        return Hint(name, sequence, generation, hint.rollout_id)

    def _failed_before(self, name: str, sequence: int, generation: int) -> bool:
        """The same desired (bundle, sequence, generation) already failed or rolled back
        here: do not retry it until the operator pushes again (a new generation).
        All three come from the signed desired state (:meth:`_signed`), never a hint."""
        try:
            rec = self._update_state.load()
        except Exception:
            return False
        return (
            rec.state in (UpdateState.FAILED, UpdateState.ROLLED_BACK)
            and rec.bundle_name == name
            and rec.hint_sequence == sequence
            and rec.generation == generation
        )

    def _update_worker(self) -> None:
        if self.runner is None:
            return
        try:
            self.runner.resume()
        except Exception:
            log.exception("resuming the persisted update failed")
        poll_s = self.config.desired_state_poll_s
        next_poll = time.monotonic() + poll_s
        while not self._stop.is_set():
            self._hint_ready.wait(0.5)
            if self._stop.is_set():
                return
            if poll_s > 0 and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + poll_s
                self._poll_desired()
            hint = self.hints.take()
            if hint is None:
                if not self.hints.seconds_until_allowed():
                    self._hint_ready.clear()
                continue
            hint = self._signed(hint)
            if hint is None:
                continue
            if self._failed_before(hint.bundle_name, hint.sequence, hint.generation):
                self.hints.counters["dropped.failed_before"] += 1
                log.info(
                    "not retrying %s %d (generation %d): it failed here before",
                    hint.bundle_name,
                    hint.sequence,
                    hint.generation,
                )
                continue
            try:
                self.runner.start(hint.bundle_name, hint.sequence, hint.generation, hint.rollout_id)
            except UpdateError as exc:
                log.warning("update not started: %s", exc)
            except Exception:
                log.exception("update crashed")

    def sample(self) -> None:
        status = self._runtime_status()
        record_state = ""
        try:
            record_state = self._update_state.load().state.value
        except Exception:
            record_state = ""
        self.batcher.add(
            make_point(
                dt.datetime.now(dt.UTC),
                status.metrics if status is not None and status.HasField("metrics") else None,
                self.host.sample(),
                record_state,
                status.active.bundle if status is not None and status.HasField("active") else None,
                scheduling=status.scheduling if status is not None else "",
                realtime=status is not None and status.realtime,
            )
        )

    def start(self) -> None:
        self.transport.start()
        self._worker = threading.Thread(
            target=self._update_worker, name="agent-update", daemon=True
        )
        self._worker.start()
        channel = getattr(self._effects, "channel", None)  # the plane, over mTLS
        if self.config.upload_recordings and channel is not None:
            threading.Thread(
                target=self._upload_worker, args=(channel,), name="agent-upload", daemon=True
            ).start()

    def _upload_worker(self, channel: Any) -> None:
        """Flight-recorder segments to the plane, paced, only while no telemetry waits."""
        from fleet.recordings import SegmentUploader

        c = self.config
        uploader = SegmentUploader(
            channel, self.layout.recordings, bytes_per_s=c.upload_bytes_per_s
        )
        while not self._stop.wait(c.upload_period_s):
            try:
                uploader.run_once(allowed=lambda: not self._stop.is_set() and len(self.spool) == 0)
            except Exception:  # uploads must never take the agent down
                log.exception("recording upload failed")

    def run(self, stop: threading.Event | None = None, drain_s: float = 5.0) -> None:
        """Run until `stop` is set (or :meth:`stop`); then drain the spool briefly."""
        c = self.config
        self.start()
        stop = stop or self._stop
        next_sample = time.monotonic()
        next_flush = next_sample + c.telemetry_period_s
        try:
            while not stop.is_set() and not self._stop.is_set():
                now = time.monotonic()
                if now >= next_sample:
                    self.sample()
                    next_sample = now + c.sample_period_s
                if now >= next_flush:
                    self.batcher.flush()
                    next_flush = now + c.telemetry_period_s
                self.pump.pump()
                stop.wait(0.02)
        finally:
            self.shutdown(drain_s)

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self, drain_s: float = 5.0) -> None:
        self._stop.set()
        self._hint_ready.set()
        self.batcher.flush()
        deadline = time.monotonic() + drain_s
        while len(self.spool) and self.transport.is_connected() and time.monotonic() < deadline:
            self.pump.pump()
            time.sleep(0.02)
        self.transport.stop(final=(self._state_topic, self._state(False)))
        if self._runtime_client is not None:
            self._runtime_client.close()
        self.spool.close()
