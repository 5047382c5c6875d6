"""MQTT 5 where the broker speaks it, else 3.1.1: the one module that imports paho.

Shared by the robot's transport (``fleet.mqtt``) and the plane's client
(``cloud.mqtt``), which each keep their own loop and callbacks:

- :class:`Protocol` decides which protocol the next CONNECT speaks: MQTT 5 first where
  asked; an attempt the broker answered "unsupported protocol version" (0x01 in a
  3.1.1 CONNACK, 0x84 in an MQTT 5 one), or closed or left unanswered before any
  CONNACK (a 3.1.1-only broker given an MQTT 5 CONNECT), is tried with the other one
  next; the first CONNACK that accepts settles it for good. Any other refusal (not
  authorised, bad identity) is no protocol question: it is reported as it is.
- :func:`new_client` builds the paho client for that protocol (in-flight window, mutual
  TLS, ``TCP_NODELAY`` on every socket: paho leaves Nagle on, which adds milliseconds
  per small publish);
- :func:`connect` sends the CONNECT: a persistent MQTT 5 session is
  ``clean_start=False`` with a Session Expiry Interval, under 3.1.1
  ``clean_session=False`` (given when the client is built);
- :func:`publish_properties` carries a message expiry (MQTT 5 only);
- :func:`reason_code` reads paho's reason codes (0x80 and up: a refusal).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "CONN_LOST",
    "NEVER_EXPIRES",
    "OK",
    "REFUSAL",
    "UNSUPPORTED_PROTOCOL",
    "Callbacks",
    "Endpoint",
    "Protocol",
    "Tls",
    "check_session_expiry",
    "connect",
    "describe",
    "new_client",
    "publish_properties",
    "reason_code",
    "topic_matches",
]

NEVER_EXPIRES = 0xFFFFFFFF
"""MQTT 5 Session Expiry Interval meaning "never"."""
REFUSAL = 0x80
"""Reason codes from here up refuse what was asked (CONNACK, SUBACK, PUBACK)."""
UNSUPPORTED_PROTOCOL = frozenset({0x01, 0x84})
"""CONNACK codes for "unsupported protocol version": 3.1.1 return code 1, MQTT 5 0x84."""
OK = MQTTErrorCode.MQTT_ERR_SUCCESS
CONN_LOST = MQTTErrorCode.MQTT_ERR_CONN_LOST


def reason_code(reason: object) -> int:
    """The numeric value of a paho ReasonCode (or of a plain int)."""
    value: Any = getattr(reason, "value", reason)
    return int(value)


def describe(reason: object) -> str:
    """``0x87 Not authorized``: the code and paho's name for it."""
    return f"0x{reason_code(reason):02X} {reason}"


def check_session_expiry(seconds: int) -> str | None:
    """Why `seconds` is no Session Expiry Interval (0..2^32-1), or None."""
    if isinstance(seconds, int) and 0 <= seconds <= NEVER_EXPIRES:
        return None
    return f"session_expiry_s {seconds} is not 0..2^32-1"


class Protocol:
    """Which protocol the next CONNECT speaks (pure: no I/O)."""

    def __init__(self, mqtt5: bool) -> None:
        self.wanted_v5 = mqtt5
        self.v5 = mqtt5
        self.settled = not mqtt5
        """A CONNACK accepted a connection: the protocol no longer changes."""

    @property
    def name(self) -> str:
        """``"5"`` or ``"3.1.1"``: what the next (or current) connection speaks."""
        return "5" if self.v5 else "3.1.1"

    @property
    def fell_back(self) -> bool:
        """MQTT 5 was asked for and the broker made it 3.1.1."""
        return self.wanted_v5 and not self.v5

    def accepted(self) -> bool:
        """A CONNACK accepted the connection. True the first time (it settled now)."""
        first = not self.settled
        self.settled = True
        return first

    def failed(self, connack: int | None) -> bool:
        """An attempt ended without a connection; `connack`: the code the broker
        answered with, None if it answered none. True when the next attempt speaks the
        other protocol (the caller builds a new client for it)."""
        if self.settled or (connack is not None and connack not in UNSUPPORTED_PROTOCOL):
            return False
        self.v5 = not self.v5
        return True


class Callbacks(typing.Protocol):
    """What receives paho's callbacks (on paho's network thread)."""

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        """CONNACK: `reason` accepted (below 0x80) or refused the connection."""

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None: ...

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        """PUBACK of message `mid` (under MQTT 5 a `reason` of 0x80 or more refuses it)."""

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None: ...

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None: ...


Tls = tuple[Path | None, Path, Path | None]
"""Mutual TLS: the CA to trust (None: the system's), the client's certificate, its key
(None: in the certificate's file)."""


def new_client(
    protocol: Protocol,
    to: Endpoint,
    callbacks: Callbacks,
    *,
    max_inflight: int,
    tls: Tls | None,
    **paho_options: Any,
) -> Any:
    """A paho client for `to` speaking `protocol`'s version, its callbacks going to
    `callbacks`. `paho_options`: passed to ``paho.Client`` (``manual_ack``,
    ``reconnect_on_failure``). Nothing is sent until :func:`connect`."""
    if protocol.v5:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=to.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            **paho_options,
        )
    else:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=to.client_id,
            clean_session=to.clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            **paho_options,
        )
    c.max_inflight_messages_set(max_inflight)
    if tls is not None:
        ca, cert, key = tls
        c.tls_set(
            ca_certs=str(ca) if ca is not None else None,
            certfile=str(cert),
            keyfile=str(key) if key is not None else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    c.on_socket_open = _nodelay
    c.on_connect = callbacks._on_connect
    c.on_disconnect = callbacks._on_disconnect
    c.on_publish = callbacks._on_publish
    c.on_message = callbacks._on_message
    c.on_subscribe = callbacks._on_subscribe
    return c


@dataclass(frozen=True)
class Endpoint:
    """Where and how a client connects: the broker, the keep-alive, and its session
    (clean: it ends with the connection; else kept `session_expiry_s` under MQTT 5)."""

    host: str
    port: int
    client_id: str
    keepalive_s: int
    clean_session: bool
    session_expiry_s: int


def connect_properties(protocol: Protocol, clean_session: bool, session_expiry_s: int) -> Any:
    """The CONNECT's properties: MQTT 5's Session Expiry Interval (0 for a clean
    session: it ends with the connection); None under 3.1.1."""
    if not protocol.v5:
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0 if clean_session else session_expiry_s
    return props


def connect(client: Any, protocol: Protocol, to: Endpoint) -> None:
    """Send the first CONNECT of `client` (paho's ``reconnect()`` repeats it).
    Raises what the socket raises (OSError, ssl.SSLError) when the broker is away."""
    if protocol.v5:
        client.connect(
            to.host,
            to.port,
            keepalive=to.keepalive_s,
            clean_start=to.clean_session,
            properties=connect_properties(protocol, to.clean_session, to.session_expiry_s),
        )
    else:
        client.connect(to.host, to.port, keepalive=to.keepalive_s)


def publish_properties(protocol: Protocol, expiry_s: int | None) -> Any:
    """A PUBLISH's properties: the Message Expiry Interval (the broker drops a message
    it could not deliver within it); None under 3.1.1 or without an expiry."""
    if expiry_s is None or not protocol.v5:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = int(expiry_s)
    return props


def topic_matches(topic_filter: str, topic_name: str) -> bool:
    """Whether `topic_name` matches `topic_filter` (MQTT wildcards)."""
    return bool(paho.topic_matches_sub(topic_filter, topic_name))


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):  # unix socket / websocket wrapper
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
