"""The agent's MQTT transport — the only robot-side module that imports paho.

MQTT 3.1.1 (any broker serves), mutual TLS with the device certificate, QoS 1,
a persistent session (``clean_session=False``) so update hints sent while the robot
was offline are delivered when it returns. Topics::

    edgeflux/v1/devices/<id>/telemetry   device → cloud, QoS 1 (TelemetryBatch)
    edgeflux/v1/devices/<id>/events      device → cloud, QoS 1 (Event)
    edgeflux/v1/devices/<id>/state       retained DeviceState; the last will says offline
    edgeflux/v1/devices/<id>/updates     cloud → device, QoS 1 (UpdateHint)

The network loop runs on one thread owned here. Reconnects back off exponentially
with full jitter (a fleet that lost its broker must not come back in lock step).
``TCP_NODELAY`` is set on every socket (paho leaves Nagle on, which adds
milliseconds per small publish). Callers see :class:`MqttError`, never paho's types.

Usage::

    t = MqttTransport(MqttSettings(host="broker", port=8883, tls=TlsFiles(ca, crt, key)),
                      client_id="robot-7", will=(state_topic, offline_bytes))
    t.subscribe(topic("robot-7", "updates"), lambda topic, payload: ...)
    t.start()
    t.publish(topic("robot-7", "events"), payload, on_ack=lambda: ...)
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

__all__ = [
    "KINDS",
    "MqttError",
    "MqttSettings",
    "MqttTransport",
    "TlsFiles",
    "backoff_delay",
    "parse_topic",
    "topic",
]

log = logging.getLogger(__name__)

PREFIX = "edgeflux/v1/devices"
KINDS = ("telemetry", "events", "state", "updates")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class MqttError(RuntimeError):
    """The MQTT transport could not do what was asked; the message says what and where."""


def topic(device_id: str, kind: str) -> str:
    """The topic of `kind` for `device_id` (both validated: no wildcards, no slashes)."""
    if not _DEVICE_ID.match(device_id):
        raise MqttError(f"device id {device_id!r} is not valid in an MQTT topic")
    if kind not in KINDS:
        raise MqttError(f"unknown topic kind {kind!r}; expected one of {KINDS}")
    return f"{PREFIX}/{device_id}/{kind}"


def parse_topic(name: str) -> tuple[str, str] | None:
    """(device id, kind) of a well-formed EdgeFlux topic, else None."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX:
        return None
    device_id, kind = parts[3], parts[4]
    if not _DEVICE_ID.match(device_id) or kind not in KINDS:
        return None
    return device_id, kind


def _unshare(topic_filter: str) -> str:
    """The filter a shared subscription ``$share/<group>/<filter>`` matches messages by."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else topic_filter
    return topic_filter


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return rng.uniform(0.0, min(cap_s, base_s * (2.0 ** min(attempt, 30))))


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: TlsFiles | None = None
    keepalive_s: int = 30
    reconnect_base_s: float = 0.5
    reconnect_cap_s: float = 30.0
    max_inflight: int = 32
    """paho's in-flight window; the spool pump keeps its own window no larger."""
    max_payload_bytes: int = 256 * 1024
    """Incoming payloads larger than this are dropped and counted, never parsed."""


Handler = Callable[[str, bytes], None]


class MqttTransport:
    """One MQTT connection with reconnects, a last will and PUBACK callbacks."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        on_connected: Callable[[], None] | None = None,
        clean_session: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._rng = rng or random.Random()
        self._on_connected = on_connected
        self._handlers: dict[str, Handler] = {}
        self._limits: dict[str, int] = {}  # per-filter incoming caps above the default
        self._acks: dict[int, Callable[[], None]] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters: dict[str, int] = {"connects": 0, "disconnects": 0, "dropped_oversize": 0}
        self.last_error = ""

        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        c.max_inflight_messages_set(settings.max_inflight)
        c.max_queued_messages_set(0)
        if settings.tls is not None:
            for p in (settings.tls.ca, settings.tls.cert, settings.tls.key):
                if not Path(p).is_file():
                    raise MqttError(f"TLS file {p} does not exist (device identity incomplete)")
            c.tls_set(
                ca_certs=str(settings.tls.ca),
                certfile=str(settings.tls.cert),
                keyfile=str(settings.tls.key),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_socket_open = self._on_socket_open
        # Only the network thread touches the socket: without this hook paho writes a
        # publish from the caller's thread while the loop reads, and concurrent use of
        # one TLS connection corrupts it ("bad record mac", the broker disconnects).
        # With it, publish() queues and wakes the loop, which writes.
        c.on_socket_register_write = self._on_socket_register_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self._client = c

    # ---- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise MqttError("transport already started")
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 5.0) -> None:
        """Publish `final` (e.g. a retained offline state) if connected, then disconnect."""
        if final is not None and self.is_connected():
            done = threading.Event()
            self.publish(final[0], final[1], on_ack=done.set, retain=True)
            done.wait(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with contextlib.suppress(Exception):  # already closed
            self._client.disconnect()
        self._connected.clear()

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # ---- publish / subscribe

    def publish(
        self,
        topic_name: str,
        payload: bytes,
        on_ack: Callable[[], None] | None = None,
        qos: int = 1,
        retain: bool = False,
    ) -> bool:
        """Hand one message to the connection; `on_ack` runs on PUBACK. False if offline."""
        if not self.is_connected():
            return False
        info = self._client.publish(topic_name, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if on_ack is not None:
            with self._lock:
                early = info.mid in self._early
                self._early.discard(info.mid)
                if not early:
                    self._acks[info.mid] = on_ack
            if early:  # the PUBACK beat us back from paho.publish()
                on_ack()
        return True

    def subscribe(
        self, topic_filter: str, handler: Handler, *, max_payload_bytes: int | None = None
    ) -> None:
        """Subscribe now and after every reconnect; `handler(topic, payload)`.

        `max_payload_bytes`: a larger incoming cap for this filter only (e.g. blocks of
        update files); every other topic keeps ``settings.max_payload_bytes``."""
        with self._lock:
            self._handlers[topic_filter] = handler
            if max_payload_bytes is not None:
                self._limits[topic_filter] = max_payload_bytes
        if self.is_connected():
            self._client.subscribe(topic_filter, qos=1)

    # ---- paho callbacks (network thread)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # unix socket / websocket wrapper
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """Nothing to register: the loop's select() already watches the socket."""

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("MQTT %s: %s", self.client_id, self.last_error)
            return
        self.counters["connects"] += 1
        with self._lock:
            filters = list(self._handlers)
        for f in filters:
            client.subscribe(f, qos=1)
        self._connected.set()
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                log.exception("on_connected hook failed")

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._connected.is_set():
            self.counters["disconnects"] += 1
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            cb = self._acks.pop(mid, None)
            if cb is None:
                self._early.add(mid)
        if cb is not None:
            try:
                cb()
            except Exception:
                log.exception("PUBACK callback failed")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        payload = bytes(message.payload)
        with self._lock:
            matching = [
                (f, h)
                for f, h in self._handlers.items()
                if paho.topic_matches_sub(_unshare(f), message.topic)
            ]
            limit = max(
                [self.settings.max_payload_bytes, *(self._limits.get(f, 0) for f, _ in matching)]
            )
        handlers = [h for _, h in matching]
        if len(payload) > limit:
            self.counters["dropped_oversize"] += 1
            log.warning(
                "dropped a %d-byte message on %s (limit %d)", len(payload), message.topic, limit
            )
            return
        for h in handlers:
            try:
                h(message.topic, payload)
            except Exception:  # one bad message must not stop the network loop
                log.exception("handler for %s failed", message.topic)

    # ---- the network loop

    def _run(self) -> None:
        s = self.settings
        attempt = 0
        first = True
        up = False
        while not self._stop.is_set():
            if not up:
                try:
                    if first:
                        self._client.connect(s.host, s.port, keepalive=s.keepalive_s)
                        first = False
                    else:
                        self._client.reconnect()
                    up = True
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self.last_error = f"cannot connect to {s.host}:{s.port}: {exc}"
                    log.debug("MQTT %s: %s", self.client_id, self.last_error)
                    self._stop.wait(
                        backoff_delay(attempt, s.reconnect_base_s, s.reconnect_cap_s, self._rng)
                    )
                    attempt += 1
                    continue
            try:
                rc = self._client.loop(timeout=0.1)
            except (OSError, ssl.SSLError) as exc:
                self.last_error = str(exc)
                rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
            if self._connected.is_set():
                attempt = 0
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                up = False
                self._connected.clear()
                self._stop.wait(
                    backoff_delay(attempt, s.reconnect_base_s, s.reconnect_cap_s, self._rng)
                )
                attempt += 1
