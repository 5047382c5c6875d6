"""The agent's MQTT transport: the robot's one connection to the broker.

MQTT 5 where the broker speaks it (Mosquitto 2), else MQTT 3.1.1 (any broker
serves; the choice, the client and its CONNECT are ``protos.mqtt_connect``'s, shared
with the plane's client); mutual TLS with the device certificate, QoS 1, a persistent session so
update hints sent while the robot was offline are delivered when it returns: under
MQTT 5 ``clean_start=False`` with a Session Expiry Interval
(:attr:`MqttSettings.session_expiry_s`, a day by default), under 3.1.1
``clean_session=False``. A broker that refuses an MQTT 5 CONNECT (or closes the
connection before answering it) is tried with 3.1.1 next; a transport that once
connected with one protocol keeps it.

Refusals are never silent: a SUBACK reason code of 0x80 or more (0x87 Not
authorized: the broker's ACL) is logged with the topic and the code, counted
(``counters["subscriptions_refused"]``) and kept in :attr:`MqttTransport.refused`;
under MQTT 5 a PUBACK of 0x80 or more does not acknowledge the message (it stays in
the spool and is offered again; under 3.1.1 a broker acknowledges a denied publish
and drops it). Topics::

    edgeflux/v1/devices/<id>/telemetry   device → cloud, QoS 1 (TelemetryBatch)
    edgeflux/v1/devices/<id>/events      device → cloud, QoS 1 (Event)
    edgeflux/v1/devices/<id>/state       retained DeviceState; the last will says offline
    edgeflux/v1/devices/<id>/updates     cloud → device, QoS 1 (UpdateHint)

The network loop runs on one thread owned here. Reconnects back off exponentially
with full jitter (a fleet that lost its broker must not come back in lock step).
Callers see :class:`MqttError`, never paho's types.

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
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos import mqtt_connect
from protos.mqtt_connect import NEVER_EXPIRES
from protos.mqtt_subacks import Subacks

__all__ = [
    "KINDS",
    "NEVER_EXPIRES",
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
    mqtt5: bool = True
    """Try MQTT 5 first (3.1.1 where the broker does not speak it)."""
    connack_timeout_s: float = 5.0
    """An attempt the broker has not answered (CONNACK) within this is given up; a
    3.1.1-only broker may neither answer an MQTT 5 CONNECT nor close. (A robot whose
    very first attempt meets a broker too busy to answer in time speaks 3.1.1 until
    it restarts; it loses nothing but the reason codes.)"""
    session_expiry_s: int = 86_400
    """MQTT 5: how long the broker keeps this robot's session (its subscription and the
    hints queued for it) while the robot is offline. A day: hints expire after a day
    anyway and a robot offline longer converges through its desired-state poll, and
    a robot taken out of service does not hold broker memory for ever.
    ``NEVER_EXPIRES`` keeps it like a 3.1.1 persistent session."""


Handler = Callable[[str, bytes], None]

_LOG_EVERY_S = 10.0


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
        self._will = will
        self._handlers: dict[str, Handler] = {}
        self._limits: dict[str, int] = {}  # per-filter incoming caps above the default
        self._acks: dict[int, Callable[[], None]] = {}
        self._early: dict[int, bool] = {}  # PUBACKs that beat publish(): accepted?
        self._connack: int | None = None  # this attempt's CONNACK code, None: none yet
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refusal_log = 0.0
        self.counters: dict[str, int] = {
            "connects": 0,
            "disconnects": 0,
            "dropped_oversize": 0,
            "subscriptions_refused": 0,
            "publishes_refused": 0,
        }
        self._subacks = Subacks(lambda: self.client_id, self.counters, log)
        self.refused = self._subacks.refused
        """Topic filter → the SUBACK reason code the broker refused it with (last seen)."""
        self.last_error = ""
        if settings.tls is not None:
            for p in (settings.tls.ca, settings.tls.cert, settings.tls.key):
                if not Path(p).is_file():
                    raise MqttError(f"TLS file {p} does not exist (device identity incomplete)")
        bad = mqtt_connect.check_session_expiry(settings.session_expiry_s)
        if bad is not None:
            raise MqttError(bad)
        self._protocol = mqtt_connect.Protocol(settings.mqtt5)
        self._endpoint = mqtt_connect.Endpoint(
            settings.host,
            settings.port,
            client_id,
            settings.keepalive_s,
            clean_session,
            settings.session_expiry_s,
        )
        self._client = self._make_client()

    @property
    def protocol(self) -> str:
        """``"5"`` or ``"3.1.1"``: what this transport speaks (or tries next)."""
        return self._protocol.name

    def _make_client(self) -> Any:
        tls = self.settings.tls
        c = mqtt_connect.new_client(
            self._protocol,
            self._endpoint,
            self,
            max_inflight=self.settings.max_inflight,
            tls=(tls.ca, tls.cert, tls.key) if tls is not None else None,
            reconnect_on_failure=False,
        )
        c.max_queued_messages_set(0)
        if self._will is not None:
            c.will_set(self._will[0], self._will[1], qos=1, retain=True)
        # Only the network thread touches the socket: without this hook paho writes a
        # publish from the caller's thread while the loop reads, and concurrent use of
        # one TLS connection corrupts it ("bad record mac", the broker disconnects).
        # With it, publish() queues and wakes the loop, which writes.
        c.on_socket_register_write = self._on_socket_register_write
        return c

    def _connect(self) -> None:
        """The first CONNECT of the current client (later ones: ``reconnect()``)."""
        mqtt_connect.connect(self._client, self._protocol, self._endpoint)

    def _other_protocol(self) -> None:
        """A new client for the other protocol (:meth:`Protocol.failed` switched it)."""
        with contextlib.suppress(Exception):
            sock = self._client.socket()
            if sock is not None:
                sock.close()
        with self._lock:  # message ids start again with the new client
            self._acks.clear()
            self._early.clear()
        self._subacks.clear()
        self._client = self._make_client()

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
            # The network thread is gone: write the DISCONNECT here, so the broker
            # ends the connection now (and starts the session's expiry) rather than
            # at the keep-alive time-out.
            self._client.loop(timeout=0.2)
        with contextlib.suppress(Exception):
            sock = self._client.socket()
            if sock is not None:
                sock.close()
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
        if info.rc != mqtt_connect.OK:
            return False
        if on_ack is not None:
            with self._lock:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._acks[info.mid] = on_ack
            if early:  # the PUBACK beat us back from paho.publish(), and accepted it
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
            self._send_subscribe(self._client, topic_filter)

    def _send_subscribe(self, client: Any, topic_filter: str) -> None:
        _rc, mid = client.subscribe(topic_filter, qos=1)
        self._subacks.sent(mid, topic_filter)

    # ---- paho callbacks (network thread)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """Nothing to register: the loop's select() already watches the socket."""

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack = mqtt_connect.reason_code(reason)
        if self._connack >= mqtt_connect.REFUSAL:
            self.last_error = f"broker refused the connection: {mqtt_connect.describe(reason)}"
            log.warning("MQTT %s (MQTT %s): %s", self.client_id, self.protocol, self.last_error)
            return
        if self._protocol.accepted() and self._protocol.fell_back:
            log.info("MQTT %s: the broker does not speak MQTT 5; using 3.1.1", self.client_id)
        self.counters["connects"] += 1
        with self._lock:
            filters = list(self._handlers)
        for f in filters:
            self._send_subscribe(client, f)
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

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._subacks.answered(mid, [mqtt_connect.reason_code(r) for r in reasons])

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        accepted = mqtt_connect.reason_code(reason) < mqtt_connect.REFUSAL
        with self._lock:
            cb = self._acks.pop(mid, None)
            if cb is None:
                self._early[mid] = accepted
        if not accepted:
            # MQTT 5 only (3.1.1 brokers acknowledge a denied publish): not acknowledged,
            # so the spool keeps the message and offers it again.
            self.counters["publishes_refused"] += 1
            now = time.monotonic()
            if now - self._last_refusal_log >= _LOG_EVERY_S:
                self._last_refusal_log = now
                log.error(
                    "MQTT %s: the broker refused a publish: %s (%d refused so far; kept "
                    "for a later try)",
                    self.client_id,
                    mqtt_connect.describe(reason),
                    self.counters["publishes_refused"],
                )
            return
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
                if mqtt_connect.topic_matches(_unshare(f), message.topic)
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
        began = 0.0
        while not self._stop.is_set():
            if not up:
                try:
                    self._connack = None
                    if first:
                        self._connect()
                        first = False
                    else:
                        self._client.reconnect()
                    up = True
                    began = time.monotonic()
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
                rc = mqtt_connect.CONN_LOST
            if self._connected.is_set():
                attempt = 0
            elif self._connack is None and time.monotonic() - began > s.connack_timeout_s:
                self.last_error = f"no CONNACK within {s.connack_timeout_s:g} s"
                rc = mqtt_connect.CONN_LOST
            if rc != mqtt_connect.OK:
                up = False
                self._connected.clear()
                if self._protocol.failed(self._connack):
                    self._other_protocol()
                    first = True
                self._stop.wait(
                    backoff_delay(attempt, s.reconnect_base_s, s.reconnect_cap_s, self._rng)
                )
                attempt += 1
