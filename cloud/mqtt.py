"""The control plane's MQTT client: ingest's subscriptions and the plane's hints.

(`cloud` may not import `fleet`, so the cloud side has its own client; the topic
contract is pinned identical to `fleet.mqtt` by tests/fleet/test_ingest.py. Which
protocol to speak, the paho client and its CONNECT are ``protos.mqtt_connect``'s,
shared with the robot's transport.)

Two uses: ingest subscribes with **manual acknowledgement** — a QoS 1 message is
PUBACKed only after the store committed it, so an ingest process that dies with
messages in hand gets them redelivered from its persistent session rather than
losing them — and the control plane publishes update hints and waits for PUBACK.

Both speak MQTT 5 where the broker does (Mosquitto 2) and fall back to 3.1.1 where
it answers "unsupported protocol version", closes or does not answer an MQTT 5
CONNECT (the embedded development broker); a broker that refuses the client itself
(not authorised) is reported at once. A persistent MQTT 5 session is
``clean_start=False`` with a Session Expiry Interval
(:attr:`CloudMqttSettings.session_expiry_s`; ingest's never expires, like its 3.1.1
session: it is the only copy of what robots sent while ingest is down).
A subscription the broker refuses (SUBACK reason code 0x80 or more) is logged with
the topic and the code, counted and kept in :attr:`CloudMqtt.refused`.
"""

from __future__ import annotations

import contextlib
import logging
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
    "PREFIX",
    "SHARE_GROUP",
    "CloudMqtt",
    "CloudMqttError",
    "CloudMqttSettings",
    "Delivery",
    "parse_topic",
    "topic",
]

log = logging.getLogger(__name__)

HINT_EXPIRY_S = 86_400
"""Update hints expire after a day (MQTT 5): a robot offline longer converges through
its desired-state poll, and a month-old nudge is not delivered in a burst."""

PREFIX = "edgeflux/v1/devices"
SHARE_GROUP = "edgeflux-ingest"
KINDS = ("telemetry", "events", "state", "updates")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CloudMqttError(RuntimeError):
    """The broker could not be reached or refused a request; the message says which."""


def topic(device_id: str, kind: str) -> str:
    if not _DEVICE_ID.match(device_id) or kind not in KINDS:
        raise CloudMqttError(f"no EdgeFlux topic for device {device_id!r} and kind {kind!r}")
    return f"{PREFIX}/{device_id}/{kind}"


def parse_topic(name: str) -> tuple[str, str] | None:
    """(device id, kind) of a well-formed EdgeFlux topic, else None."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX:
        return None
    if not _DEVICE_ID.match(parts[3]) or parts[4] not in KINDS:
        return None
    return parts[3], parts[4]


@dataclass(frozen=True)
class CloudMqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    keepalive_s: int = 30
    client_id: str = "edgeflux-ingest-1"
    max_inflight: int = 1000
    session_expiry_s: int = NEVER_EXPIRES
    """MQTT 5, persistent sessions: how long the broker keeps the session (and the
    QoS 1 messages queued in it) while this client is away."""


@dataclass(frozen=True)
class Delivery:
    """One received message; call :meth:`ack` once it is safely stored."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    _client: Any

    def ack(self) -> None:
        if self.qos > 0:
            self._client.ack(self.mid, self.qos)


class CloudMqtt:
    """A paho client on its own network thread, with paho's reconnect loop."""

    def __init__(
        self,
        settings: CloudMqttSettings,
        *,
        on_message: Callable[[Delivery], None] | None = None,
        manual_ack: bool = False,
        clean_session: bool = False,
        mqtt5: bool = False,
        on_refused: Callable[[str, int], None] | None = None,
    ) -> None:
        """`mqtt5`: speak MQTT 5 where the broker does (message expiry on publishes,
        reason codes, a session expiry for a persistent session), else 3.1.1.
        `on_refused(topic_filter, reason_code)`: a subscription the broker refused."""
        bad = mqtt_connect.check_session_expiry(settings.session_expiry_s)
        if bad is not None:
            raise ValueError(bad)
        self.settings = settings
        self._on_message_cb = on_message
        self._manual_ack = manual_ack
        self._subs: list[str] = []
        self.counters: dict[str, int] = {"subscriptions_refused": 0}
        self._subacks = Subacks(lambda: self.settings.client_id, self.counters, log, on_refused)
        self.refused = self._subacks.refused
        """Topic filter → the SUBACK reason code the broker refused it with (last seen)."""
        self._refused_pubs: dict[int, int] = {}
        self._acks: dict[int, threading.Event] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.last_error = ""
        self._protocol = mqtt_connect.Protocol(mqtt5)
        s = settings
        self._endpoint = mqtt_connect.Endpoint(
            s.host, s.port, s.client_id, s.keepalive_s, clean_session, s.session_expiry_s
        )
        self._connack: int | None = None  # the first attempt's CONNACK code; None: none yet
        self._ended = threading.Event()  # the first MQTT 5 attempt was refused or dropped
        self._client = self._make_client()

    @property
    def mqtt5(self) -> bool:
        """Whether this client speaks MQTT 5 (after :meth:`start`: what the broker took)."""
        return self._protocol.v5

    def _make_client(self) -> Any:
        s = self.settings
        c = mqtt_connect.new_client(
            self._protocol,
            self._endpoint,
            self,
            max_inflight=s.max_inflight,
            tls=(s.ca, s.cert, s.key) if s.cert is not None else None,
            manual_ack=self._manual_ack,
        )
        c.reconnect_delay_set(0.2, 10)  # paho takes fractional seconds
        return c

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect (raising CloudMqttError if the broker is unreachable) and start the loop."""
        s = self.settings
        if self._protocol.v5:
            self._connect()
            deadline = time.monotonic() + min(timeout_s, 3.0)
            while not self._ended.is_set() and time.monotonic() < deadline:
                if self._connected.wait(0.02):
                    self._await_subacks(timeout_s)
                    return
            self.stop()
            if not self._protocol.failed(self._connack):
                raise CloudMqttError(
                    f"MQTT broker {s.host}:{s.port} refused {s.client_id!r}: {self.last_error}"
                )
            # A 3.1.1-only broker refuses (or drops) an MQTT 5 CONNECT: speak 3.1.1.
            log.info(
                "MQTT broker %s:%d: no MQTT 5 (%s); using 3.1.1",
                s.host,
                s.port,
                self.last_error or "no CONNACK",
            )
            self.last_error = ""
            self._subacks.clear()  # message ids start again with the new client
            self._client = self._make_client()
        self._connect()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise CloudMqttError(
                f"MQTT broker {s.host}:{s.port} did not accept {s.client_id!r} within "
                f"{timeout_s:.0f} s: {self.last_error or 'no CONNACK'}"
            )
        self._await_subacks(timeout_s)

    def _await_subacks(self, timeout_s: float) -> None:
        """Return once the broker answered every subscription sent on connect: a
        message published after :meth:`start` then reaches this client even on its
        first connection, when there is no session yet that would have queued it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._subacks.waiting():
                return
            time.sleep(0.005)
        log.warning(
            "MQTT broker %s:%d has not answered %s's subscriptions within %.0f s",
            self.settings.host,
            self.settings.port,
            self.settings.client_id,
            timeout_s,
        )

    def _connect(self) -> None:
        s = self.settings
        try:
            mqtt_connect.connect(self._client, self._protocol, self._endpoint)
        except (OSError, ssl.SSLError) as exc:
            raise CloudMqttError(f"cannot connect to MQTT broker {s.host}:{s.port}: {exc}") from exc
        self._client.loop_start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.append(topic_filter)
        if self.is_connected():
            self._send_subscribe(self._client, topic_filter)

    def _send_subscribe(self, client: Any, topic_filter: str) -> None:
        _rc, mid = client.subscribe(topic_filter, qos=1)
        self._subacks.sent(mid, topic_filter)

    def publish(
        self,
        topic_name: str,
        payload: bytes,
        *,
        retain: bool = False,
        wait_s: float | None = 5.0,
        expiry_s: int | None = None,
    ) -> bool:
        """Publish at QoS 1; with `wait_s`, block until PUBACK (False on time-out).

        `expiry_s` (MQTT 5 only; ignored on 3.1.1): the broker discards the message if it
        could not be delivered within that time (a hint for a robot offline for days)."""
        done = threading.Event()
        props = mqtt_connect.publish_properties(self._protocol, expiry_s)
        info = self._client.publish(topic_name, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt_connect.OK:
            return False
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                done.set()
            else:
                self._acks[info.mid] = done
        if wait_s is None:
            return True
        if not done.wait(wait_s):
            return False
        with self._lock:
            code = self._refused_pubs.pop(info.mid, None)
        if code is not None:  # MQTT 5: the broker said no (3.1.1 brokers drop silently)
            log.error(
                "MQTT %s: the broker refused the publish to %s with reason code 0x%02X",
                self.settings.client_id,
                topic_name,
                code,
            )
            return False
        return True

    # ---- callbacks

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        code = mqtt_connect.reason_code(reason)
        if self._connack is None:
            self._connack = code
        if code >= mqtt_connect.REFUSAL:
            self.last_error = f"broker refused the connection: {mqtt_connect.describe(reason)}"
            if self._protocol.v5 and not self._protocol.settled:
                # start() decides what next: no MQTT 5 reconnects meanwhile
                self._ended.set()
                client.disconnect()
            return
        self._protocol.accepted()
        with self._lock:
            subs = list(self._subs)
        for f in subs:
            self._send_subscribe(client, f)
        self._connected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._protocol.v5 and not self._protocol.settled:
            self._ended.set()
        self._connected.clear()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._subacks.answered(mid, [mqtt_connect.reason_code(r) for r in reasons])

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        code = mqtt_connect.reason_code(reason)
        with self._lock:
            if code >= mqtt_connect.REFUSAL:
                self._refused_pubs[mid] = code
            ev = self._acks.pop(mid, None)
            if ev is None:
                self._early.add(mid)
        if ev is not None:
            ev.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self._on_message_cb is None:
            return
        try:
            name = message.topic
        except UnicodeDecodeError:  # not UTF-8: ingest drops it as a bad topic
            name = ""
        self._on_message_cb(
            Delivery(name, bytes(message.payload), message.mid, message.qos, client)
        )
