"""Where a client finds the control plane: one address, a DNS name, or several replicas.

Every client of the plane (the robot's agent, the operator console and CLIs) takes the
same text: ``HOST:PORT``, or several separated by commas
(``10.0.0.5:7443,10.0.0.6:7443``). :func:`plane_target` turns it into what a gRPC
channel takes, with client-side ``round_robin`` load balancing, so

- one ``HOST:PORT`` whose name resolves to several addresses spreads calls over all of
  them (gRPC re-resolves the name when a connection fails);
- a list spreads calls over its replicas; a replica that goes away is skipped until it
  answers again, with no change to the client's configuration. Names in a list are
  resolved once, when the channel is made; one that does not resolve then is left
  out, and where several families resolve, the IPv4 addresses are used.

TLS: the client checks every replica's server certificate against one name, the host
of the first address (``authority``), so that certificate must carry it (as a DNS name
or an IP address). Replicas that share one plane home share its server certificate,
which lists all the ``server_hosts`` given when the home was created.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PlaneTarget", "TargetError", "parse_addresses", "plane_target"]

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")


class TargetError(ValueError):
    """The plane address text is not valid; the message names the bad entry."""


@dataclass(frozen=True)
class PlaneTarget:
    """`target` for ``grpc.secure_channel``; `options` to pass with it."""

    target: str
    authority: str  # the host name the servers' certificates are checked against
    options: tuple[tuple[str, str | int], ...]
    addresses: tuple[tuple[str, int], ...]  # as given: (host, port)


def _split(entry: str, text: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TargetError(
            f"plane address {entry!r} in {text!r}: expected HOST:PORT with a port in 1..65535"
        )
    if any(c.isspace() or c in "/,[]" for c in host):
        raise TargetError(f"plane address {entry!r} in {text!r}: {host!r} is not a host name")
    return host, int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` resolves to now; none if it does not (it is left out)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


def parse_addresses(addresses: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """(host, port) of each entry of ``"HOST:PORT[,HOST:PORT...]"`` (no name lookup).

    Raises :class:`TargetError` naming the first entry that is not ``HOST:PORT``.
    """
    text = addresses if isinstance(addresses, str) else ",".join(addresses)
    entries = [e.strip() for e in text.split(",")]
    if not text.strip() or any(not e for e in entries):
        raise TargetError(f"plane address list {text!r} has an empty entry")
    return tuple(_split(e, text) for e in entries)


def plane_target(addresses: str | Sequence[str]) -> PlaneTarget:
    """The gRPC target for `addresses`: ``"HOST:PORT"``, ``"A:P,B:P"`` or a list of them.

    Raises :class:`TargetError` naming the entry that is not ``HOST:PORT``.
    """
    text = addresses if isinstance(addresses, str) else ",".join(addresses)
    parsed = parse_addresses(text)
    authority = parsed[0][0]
    if len(parsed) == 1:
        # the default (DNS) resolver: a name with several records is spread over
        host, port = parsed[0]
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return PlaneTarget(target, authority, (ROUND_ROBIN,), parsed)
    ips: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    for host, port in parsed:
        ip = _ip(host)
        for one in [ip] if ip is not None else _resolve(host, port):
            if (one, port) not in ips:
                ips.append((one, port))
    options = (ROUND_ROBIN, ("grpc.ssl_target_name_override", authority))
    v4 = [(ip, port) for ip, port in ips if ip.version == 4]
    v6 = [(ip, port) for ip, port in ips if ip.version == 6]
    if v4:  # one target holds one address family: IPv4 where there is any
        target = "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in v4)
    elif v6:
        target = "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in v6)
    else:  # nothing resolves now: the first name, which gRPC keeps resolving
        host, port = parsed[0]
        target = f"{host}:{port}"
    return PlaneTarget(target, authority, options, parsed)
