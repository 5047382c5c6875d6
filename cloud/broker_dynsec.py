"""Mosquitto's dynamic-security plugin as the broker's authorisation
(``edgeflux cloud broker-config --authz dynsec``).

Mosquitto 2.0's ``acl_file`` answers every SUBSCRIBE "granted" and only filters what
it delivers; the plugin refuses a subscription it does not allow (MQTT 5 reason code
0x87, "not authorized") and changes rights at run time through its control topic
``$CONTROL/dynamic-security/v1``, without a reload.

The document this module writes names every identity by the exact username
``use_subject_as_username`` gives its certificate, with one role per identity holding
the same topic rights the ACL file would (both come from
:class:`cloud.broker_grants.Grantee`). No client has a password: with
``use_subject_as_username`` the broker takes the username from the verified
certificate and never asks the plugin to check a password, and ``require_certificate``
refuses a connection without one at the TLS handshake. A subject the document does not
name (an operator, a certificate of the wrong role with a device's name) falls to the
default access, which denies publishing, subscribing and receiving.

The plane changes the document through the control topic as its own identity
(:data:`ADMIN_IDENTITY`, certificate under the home's ``pki/services``), whose role
may use that topic and nothing else.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cloud.broker_grants import Grantee, device_grantee, service_grantees
from cloud.pki import broker_username, subject_for

DEFAULT_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
"""Where Debian's ``mosquitto`` package installs the dynamic-security plugin."""

__all__ = [
    "ADMIN_IDENTITY",
    "CONTROL_TOPIC",
    "DEFAULT_PLUGIN",
    "DynsecError",
    "add_device_commands",
    "dynsec_document",
    "remove_device_commands",
    "send_commands",
]

ADMIN_IDENTITY = "edgeflux-broker-admin"
"""The plane's identity on the control topic (a service certificate)."""
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ADMIN_ROLE = "edgeflux-broker-admin"


class DynsecError(RuntimeError):
    """The broker did not apply a dynamic-security change; the message says why."""


def role_name(g: Grantee) -> str:
    return f"{g.kind}:{g.name}"


def role_acls(g: Grantee, share_groups: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The plugin's ACL entries for `g`: ``write`` → publish; ``read`` → subscribe
    (the filter itself, and for the plane through ``$share/<group>/``) and receive."""
    acls: list[dict[str, Any]] = []
    for access, topic in g.topics():
        if access == "write":
            acls.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
            continue
        acls.append({"acltype": "subscribePattern", "topic": topic, "allow": True})
        if g.kind == "service":
            for group in share_groups:
                shared = f"$share/{group}/{topic}"
                acls.append({"acltype": "subscribePattern", "topic": shared, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
    return acls


def _admin_role() -> dict[str, Any]:
    return {
        "rolename": ADMIN_ROLE,
        "acls": [
            {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
            {"acltype": "subscribeLiteral", "topic": RESPONSE_TOPIC, "allow": True},
            {"acltype": "publishClientReceive", "topic": RESPONSE_TOPIC, "allow": True},
        ],
    }


def _client(username: str, role: str) -> dict[str, Any]:
    return {"username": username, "roles": [{"rolename": role}]}


def dynsec_document(
    ingest_identities: tuple[str, ...],
    publisher_identity: str,
    devices: tuple[str, ...],
    share_groups: tuple[str, ...],
) -> dict[str, Any]:
    """The plugin's configuration file: a client and a role per identity, the plane's
    admin on the control topic, everything else denied."""
    grantees = [
        *service_grantees(ingest_identities, publisher_identity),
        *(device_grantee(d) for d in dict.fromkeys(devices)),
    ]
    admin = broker_username(subject_for("service", ADMIN_IDENTITY))
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            _client(admin, ADMIN_ROLE),
            *(_client(g.username, role_name(g)) for g in grantees),
        ],
        "groups": [],
        "roles": [
            _admin_role(),
            *({"rolename": role_name(g), "acls": role_acls(g, share_groups)} for g in grantees),
        ],
    }


def add_device_commands(device: str) -> list[dict[str, Any]]:
    g = device_grantee(device)
    return [
        {"command": "createRole", "rolename": role_name(g), "acls": role_acls(g)},
        {"command": "createClient", "username": g.username, "roles": [{"rolename": role_name(g)}]},
    ]


def remove_device_commands(device: str) -> list[dict[str, Any]]:
    """Delete the device's client (the plugin disconnects it) and its role."""
    g = device_grantee(device)
    return [
        {"command": "deleteClient", "username": g.username},
        {"command": "deleteRole", "rolename": role_name(g)},
    ]


# What a command may answer and still mean "done": adding what is there, removing
# what is gone (a repeated add or revoke).
_HARMLESS = ("already exists", "not found")


def send_commands(
    host: str,
    port: int,
    tls: tuple[Path, Path, Path],
    commands: list[dict[str, Any]],
    timeout_s: float = 10.0,
) -> None:
    """Send `commands` on the control topic as :data:`ADMIN_IDENTITY` (`tls`: CA,
    certificate, key) and wait for every response; DynsecError names what failed."""
    from cloud.mqtt import CloudMqtt, CloudMqttError, CloudMqttSettings, Delivery

    token = secrets.token_hex(8)
    tagged = [{**c, "correlationData": f"{token}-{i}"} for i, c in enumerate(commands)]
    answers: dict[str, dict[str, Any]] = {}
    done = threading.Event()

    def on_message(d: Delivery) -> None:
        try:
            body = json.loads(d.payload)
            responses = body["responses"]
        except (ValueError, KeyError, TypeError):
            return
        for r in responses if isinstance(responses, list) else ():
            if isinstance(r, dict) and str(r.get("correlationData", "")).startswith(token):
                answers[str(r["correlationData"])] = r
        if len(answers) >= len(tagged):
            done.set()

    ca, crt, key = tls
    settings = CloudMqttSettings(
        host=host, port=port, ca=ca, cert=crt, key=key, client_id=ADMIN_IDENTITY
    )
    client = CloudMqtt(settings, on_message=on_message, clean_session=True, mqtt5=True)
    client.subscribe(RESPONSE_TOPIC)
    try:
        client.start(timeout_s=timeout_s)
        payload = json.dumps({"commands": tagged}).encode()
        if not client.publish(CONTROL_TOPIC, payload, wait_s=timeout_s):
            raise DynsecError(f"the broker did not accept a message on {CONTROL_TOPIC}")
        if not done.wait(timeout_s):
            why = f"refused 0x{client.refused[RESPONSE_TOPIC]:02X}" if client.refused else ""
            raise DynsecError(
                f"no answer on {RESPONSE_TOPIC} within {timeout_s:.0f} s {why}".rstrip()
                + " (is the dynamic-security plugin loaded, and the admin identity in it?)"
            )
    except CloudMqttError as exc:
        raise DynsecError(str(exc)) from exc
    finally:
        client.stop()
    for c in tagged:
        err = answers[c["correlationData"]].get("error")
        if err and not any(h in str(err).lower() for h in _HARMLESS):
            raise DynsecError(f"{c['command']} refused by the broker: {err}")
