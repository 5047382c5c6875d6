"""Who may do what on the fleet's broker: one description of every identity's topic
rights, from which both the ACL file (:func:`cloud.broker_config.render_acl`) and the
dynamic-security document (:mod:`cloud.broker_dynsec`) are generated."""

from __future__ import annotations

from dataclasses import dataclass

from cloud.home import FILES_IDENTITY
from cloud.pki import broker_username, subject_for

__all__ = [
    "DEVICE_GRANTS",
    "FILES_GRANTS",
    "INGEST_GRANTS",
    "PREFIX",
    "PUBLISHER_GRANTS",
    "Grantee",
    "device_grantee",
    "service_grantees",
]

PREFIX = "edgeflux/v1/devices"

# What each role may do, as (access, topic kind) under PREFIX. A device's grants are on
# its own topics only; the plane's are on every device's (``+``).
DEVICE_GRANTS: tuple[tuple[str, str], ...] = (
    ("write", "telemetry"),
    ("write", "events"),
    ("write", "state"),
    ("read", "updates"),
    # Update files in blocks, for a robot that cannot reach the plane's gRPC port.
    ("write", "files/req"),
    ("read", "files/resp"),
)
INGEST_GRANTS: tuple[tuple[str, str], ...] = (
    ("read", "telemetry"),
    ("read", "events"),
    ("read", "state"),
)
PUBLISHER_GRANTS: tuple[tuple[str, str], ...] = (("write", "updates"), ("read", "state"))
FILES_GRANTS: tuple[tuple[str, str], ...] = (("read", "files/req"), ("write", "files/resp"))
"""The plane's file responder (``edgeflux-files``, :mod:`cloud.server.file_responder`)."""


@dataclass(frozen=True)
class Grantee:
    """One broker identity and its topic rights: the single description both the ACL
    file (:func:`render_acl`) and the dynamic-security document
    (:mod:`cloud.broker_dynsec`) are generated from."""

    kind: str
    """``service`` (the plane's own clients) or ``device``."""
    name: str
    grants: tuple[tuple[str, str], ...]
    """(``read`` | ``write``, topic kind) pairs under :data:`PREFIX`."""
    scope: str
    """The device level of its topics: its own id for a device, ``+`` for the plane."""

    @property
    def username(self) -> str:
        return broker_username(subject_for(self.kind, self.name))

    def topics(self) -> list[tuple[str, str]]:
        """(access, full topic filter) for each grant."""
        return [(access, f"{PREFIX}/{self.scope}/{what}") for access, what in self.grants]


def service_grantees(
    ingest_identities: tuple[str, ...],
    publisher_identity: str,
    files_identity: str = FILES_IDENTITY,
) -> list[Grantee]:
    """The plane's identities: ingest reads every device's uplink, push writes hints,
    files answers block requests."""
    out = []
    for ident in dict.fromkeys(ingest_identities):
        grants = list(INGEST_GRANTS)
        if ident == publisher_identity:
            grants += [g for g in PUBLISHER_GRANTS if g not in grants]
        out.append(Grantee("service", ident, tuple(grants), "+"))
    if publisher_identity not in ingest_identities:
        out.append(Grantee("service", publisher_identity, PUBLISHER_GRANTS, "+"))
    out.append(Grantee("service", files_identity, FILES_GRANTS, "+"))
    return out


def device_grantee(device: str) -> Grantee:
    """A device: publish only under its own id, read only its own downlink."""
    return Grantee("device", device, DEVICE_GRANTS, device)
