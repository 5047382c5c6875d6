"""Where the plane's home records how to reload its broker (``broker-reload.json``).

``edgeflux cloud broker-config --home`` writes it; device add and revoke read it to
rewrite the broker's ACL and reload Mosquitto, or change its dynamic-security plugin's
rights (see :mod:`cloud.broker_reload`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cloud.home import CloudHome
from runtime.atomicio import atomic_write_text

__all__ = ["BrokerReloadError", "ReloadHook", "hook_path", "install_hook", "load_hook"]

HOOK_NAME = "broker-reload.json"


class BrokerReloadError(RuntimeError):
    """The broker could not be reloaded or the session not closed; the message says why."""


@dataclass(frozen=True)
class ReloadHook:
    kind: str
    """``systemd``, ``pid-file`` or ``none`` (only the CRL copy is kept current)."""
    target: str
    """The systemd unit, or the path of Mosquitto's pid file."""
    crl_copy: str = ""
    """The broker's copy of the CRL (``<out>/tls/crl.pem``), refreshed before a reload."""
    acl: str = ""
    """The broker's ACL file, rewritten when devices are added or revoked; empty in a
    hook written before the ACL named identities by subject."""
    ingest_identities: tuple[str, ...] = ()
    publisher_identity: str = ""
    dynsec: str = ""
    broker: str = ""
    """``host:port`` of the listener ``broker-config`` wrote, for when ``cloud.toml``
    names no ``broker_url``."""
    """The broker's dynamic-security document (``broker-config --authz dynsec``): device
    add and revoke then go through the plugin's control topic; empty for an ACL file."""


def hook_path(home: CloudHome) -> Path:
    return home.root / HOOK_NAME


def install_hook(home: CloudHome, hook: ReloadHook) -> Path:
    """Record how to reload the broker (written by ``broker-config --reload-hook``)."""
    if hook.kind not in ("systemd", "pid-file", "none"):
        raise BrokerReloadError(f"reload hook {hook.kind!r}: expected systemd or pid-file")
    path = hook_path(home)
    raw = {
        "kind": hook.kind,
        "target": hook.target,
        "crl_copy": hook.crl_copy,
        "acl": hook.acl,
        "ingest_identities": list(hook.ingest_identities),
        "publisher_identity": hook.publisher_identity,
        "dynsec": hook.dynsec,
        "broker": hook.broker,
    }
    atomic_write_text(path, json.dumps(raw) + "\n")
    return path


def load_hook(home: CloudHome) -> ReloadHook | None:
    """The recorded hook, or None when ``broker-config`` recorded none."""
    path = hook_path(home)
    try:
        raw = json.loads(path.read_text())
        return ReloadHook(
            str(raw["kind"]),
            str(raw["target"]),
            str(raw.get("crl_copy", "")),
            acl=str(raw.get("acl", "")),
            ingest_identities=tuple(str(i) for i in raw.get("ingest_identities", ())),
            publisher_identity=str(raw.get("publisher_identity", "")),
            dynsec=str(raw.get("dynsec", "")),
            broker=str(raw.get("broker", "")),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerReloadError(f"{path} is not a reload hook: {exc}") from exc
