"""protos.mqtt_connect without a broker: the protocol choice, the CONNECT and PUBLISH
properties, reason codes. The robot's transport and the plane's client both use it;
tests/fleet/test_mqtt*.py run them against real brokers."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from protos.mqtt_connect import (
    NEVER_EXPIRES,
    UNSUPPORTED_PROTOCOL,
    Endpoint,
    Protocol,
    check_session_expiry,
    connect_properties,
    describe,
    new_client,
    publish_properties,
    reason_code,
    topic_matches,
)


def test_mqtt_5_falls_back_once_on_no_connack_and_the_first_accept_settles_it() -> None:
    p = Protocol(True)
    assert (p.name, p.settled, p.fell_back) == ("5", False, False)
    assert p.failed(None)  # closed or unanswered before any CONNACK
    assert (p.name, p.fell_back) == ("3.1.1", True)
    assert p.accepted()  # the 3.1.1 CONNACK settles it...
    assert not p.accepted()  # ...once
    assert not p.failed(None)  # a broker restart later changes nothing
    assert not p.failed(0x84)
    assert p.name == "3.1.1"


@pytest.mark.parametrize("code", sorted(UNSUPPORTED_PROTOCOL))
def test_unsupported_protocol_answers_try_the_other_one(code: int) -> None:
    p = Protocol(True)
    assert p.failed(code)
    assert p.name == "3.1.1"


@pytest.mark.parametrize("code", [0x80, 0x85, 0x86, 0x87, 0x88, 0x8A, 0x9F])
def test_a_refusal_of_the_client_is_no_protocol_question(code: int) -> None:
    p = Protocol(True)
    assert not p.failed(code)  # not authorised, bad identity, banned, ...: reported as is
    assert (p.name, p.settled) == ("5", False)


def test_a_connection_settled_on_mqtt_5_keeps_it() -> None:
    p = Protocol(True)
    assert p.accepted()
    assert not p.fell_back
    assert not p.failed(None)
    assert p.name == "5"


def test_asked_for_3_1_1_never_tries_mqtt_5() -> None:
    p = Protocol(False)
    assert p.settled
    assert not p.failed(None)
    assert not p.failed(0x84)
    assert (p.name, p.fell_back) == ("3.1.1", False)


_OUTCOMES = st.one_of(st.none(), st.integers(0, 0xFF), st.just("accepted"))


@given(st.booleans(), st.lists(_OUTCOMES, max_size=12))
def test_the_protocol_changes_only_before_the_first_accept_and_only_on_a_protocol_answer(
    mqtt5: bool, outcomes: list[int | str | None]
) -> None:
    p = Protocol(mqtt5)
    settled = not mqtt5
    v5 = mqtt5
    for o in outcomes:
        if o == "accepted":
            assert p.accepted() is not settled
            settled = True
        else:
            assert isinstance(o, int) or o is None
            switch = not settled and (o is None or o in UNSUPPORTED_PROTOCOL)
            assert p.failed(o) is switch
            v5 = v5 != switch
        assert (p.v5, p.settled) == (v5, settled)
    assert p.fell_back == (mqtt5 and not v5)


def test_connect_properties_carry_the_session_expiry_under_mqtt_5_only() -> None:
    v5 = Protocol(True)
    assert connect_properties(v5, False, 3600).SessionExpiryInterval == 3600
    assert connect_properties(v5, False, NEVER_EXPIRES).SessionExpiryInterval == NEVER_EXPIRES
    assert connect_properties(v5, True, 3600).SessionExpiryInterval == 0  # ends with it
    assert connect_properties(Protocol(False), False, 3600) is None


def test_publish_properties_carry_a_message_expiry_under_mqtt_5_only() -> None:
    assert publish_properties(Protocol(True), 86_400).MessageExpiryInterval == 86_400
    assert publish_properties(Protocol(True), None) is None
    assert publish_properties(Protocol(False), 86_400) is None


@pytest.mark.parametrize("bad", [-1, NEVER_EXPIRES + 1, 2**40])
def test_a_session_expiry_outside_32_bits_is_refused_with_the_value(bad: int) -> None:
    why = check_session_expiry(bad)
    assert why is not None and str(bad) in why and "0..2^32-1" in why


@pytest.mark.parametrize("good", [0, 1, 86_400, NEVER_EXPIRES])
def test_a_session_expiry_in_range_is_accepted(good: int) -> None:
    assert check_session_expiry(good) is None


def test_reason_codes_read_from_paho_and_plain_ints() -> None:
    refused = ReasonCode(PacketTypes.SUBACK, identifier=0x87)
    assert reason_code(refused) == 0x87
    assert reason_code(0x10) == 0x10
    assert describe(refused) == "0x87 Not authorized"


class _Seen:
    """Callbacks that remember what paho handed them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.calls.append("connect")

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.calls.append("disconnect")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.calls.append(f"publish {mid}")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.calls.append("message")

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.calls.append(f"subscribe {mid}")


def test_clients_speak_the_chosen_protocol_and_set_tcp_nodelay() -> None:
    p = Protocol(True)
    seen = _Seen()
    to = Endpoint("127.0.0.1", 1883, "robot-1", 30, False, 3600)
    c5 = new_client(p, to, seen, max_inflight=7, tls=None)
    assert c5.protocol == MQTTProtocolVersion.MQTTv5
    assert p.failed(None)
    c3 = new_client(p, to, seen, max_inflight=7, tls=None)
    assert c3.protocol == MQTTProtocolVersion.MQTTv311
    for c in (c5, c3):
        c.on_publish(c, None, 3, 0, None)
        c.on_subscribe(c, None, 4, [0], None)
    assert seen.calls == ["publish 3", "subscribe 4"] * 2
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a:
        assert not a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        c3.on_socket_open(c3, None, a)
        assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_topic_filters_match_with_wildcards() -> None:
    assert topic_matches("edgeflux/v1/devices/+/telemetry", "edgeflux/v1/devices/r-1/telemetry")
    assert topic_matches("edgeflux/v1/devices/#", "edgeflux/v1/devices/r-1/events")
    assert not topic_matches("edgeflux/v1/devices/+/telemetry", "edgeflux/v1/devices/r-1/events")
