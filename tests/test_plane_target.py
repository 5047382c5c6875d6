"""Plane addresses: one HOST:PORT, or several replicas, as one round-robin gRPC target."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fleet.config import AgentConfig
from protos.plane_target import ROUND_ROBIN, TargetError, parse_addresses, plane_target

OVERRIDE = "grpc.ssl_target_name_override"


def test_one_address_keeps_the_dns_resolver_and_balances_over_its_records() -> None:
    t = plane_target("plane.fleet.example:7443")
    assert t.target == "plane.fleet.example:7443"
    assert t.authority == "plane.fleet.example"
    assert ROUND_ROBIN in t.options and OVERRIDE not in dict(t.options)
    assert plane_target(" [::1]:7443 ").target == "[::1]:7443"


def test_a_list_of_ips_is_one_multi_address_target_checked_against_the_first_host() -> None:
    t = plane_target("127.0.0.1:7443, 10.0.0.6:7444")
    assert t.target == "ipv4:127.0.0.1:7443,10.0.0.6:7444"
    assert dict(t.options) == {"grpc.lb_policy_name": "round_robin", OVERRIDE: "127.0.0.1"}
    assert t.addresses == (("127.0.0.1", 7443), ("10.0.0.6", 7444))
    assert plane_target(["[::1]:1", "[fe80::2]:2"]).target == "ipv6:[::1]:1,[fe80::2]:2"


def test_names_in_a_list_are_resolved_and_the_name_stays_the_tls_authority() -> None:
    t = plane_target("localhost:7001,127.0.0.2:7002")
    assert t.target.startswith("ipv4:") and "127.0.0.1:7001" in t.target
    assert t.target.endswith("127.0.0.2:7002")
    assert dict(t.options)[OVERRIDE] == "localhost"


def test_a_list_whose_names_do_not_resolve_falls_back_to_the_first_name() -> None:
    t = plane_target("no-such-host.invalid:7001,also-not.invalid:7002")
    assert t.target == "no-such-host.invalid:7001"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty entry"),
        ("a:1,,b:2", "empty entry"),
        ("plane", "'plane'"),
        ("plane:", "'plane:'"),
        (":7443", "':7443'"),
        ("plane:0", "port in 1..65535"),
        ("plane:65536", "port in 1..65535"),
        ("plane:7443,b:x", "'b:x'"),
        ("pla ne:7443", "not a host name"),
        ("dns:///plane:7443", "not a host name"),
    ],
)
def test_a_bad_address_is_refused_naming_the_entry(text: str, says: str) -> None:
    with pytest.raises(TargetError, match=f".*{says}"):
        plane_target(text)


@given(st.lists(st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)), min_size=2, max_size=6))
def test_any_list_of_ipv4_replicas_round_trips(
    replicas: list[tuple[ipaddress.IPv4Address, int]],
) -> None:
    text = ",".join(f"{ip}:{port}" for ip, port in replicas)
    assert parse_addresses(text) == tuple((str(ip), port) for ip, port in replicas)
    t = plane_target(text)
    unique = list(dict.fromkeys(f"{ip}:{port}" for ip, port in replicas))
    assert t.target == "ipv4:" + ",".join(unique)
    assert t.authority == str(replicas[0][0])


@given(st.text(max_size=30))
def test_any_text_parses_or_is_refused_with_a_target_error(text: str) -> None:
    try:
        parsed = parse_addresses(text)
    except TargetError:
        return
    assert parsed and all(1 <= port <= 65535 and host for host, port in parsed)


def test_the_agent_config_refuses_a_bad_plane_address_by_field() -> None:
    ok = AgentConfig.model_validate({"device_id": "r1", "grpc_target": "10.0.0.5:1,10.0.0.6:1"})
    assert ok.grpc_target == "10.0.0.5:1,10.0.0.6:1"
    with pytest.raises(ValidationError, match="grpc_target"):
        AgentConfig.model_validate({"device_id": "r1", "grpc_target": "plane"})
