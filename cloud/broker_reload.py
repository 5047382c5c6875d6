"""A revocation takes effect on a running Mosquitto at once, without a manual step.

Mosquitto reads its ``crlfile`` again on SIGHUP (a reload), which refuses new
connections of a revoked certificate; a client already connected stays connected.
:func:`apply_revocation` therefore

1. reloads the broker with the hook that ``edgeflux cloud broker-config
   --reload-hook`` recorded in the plane's home (``broker-reload.json``):
   ``systemd`` runs ``systemctl reload <unit>``, ``pid-file`` sends SIGHUP to the
   pid Mosquitto wrote there;
2. closes the revoked client's connection: the broker makes a certificate's name the
   client id (``use_username_as_clientid``), so connecting once with a certificate of
   that name takes the session over, and the revoked client is disconnected. That
   certificate is issued for this one connection (valid 10 minutes, organisational
   unit ``session-close``, which the plane's gRPC refuses), lives in a private
   temporary directory and is deleted right after. Its reconnects then fail at the
   TLS handshake.

Without a hook the caller is told exactly what to run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cloud.broker_files import refresh_crl_copy
from cloud.home import CloudHome, HomeError
from cloud.pki import PKIError
from runtime.atomicio import atomic_write_text

__all__ = [
    "BrokerReloadError",
    "ReloadHook",
    "apply_revocation",
    "close_session",
    "hook_path",
    "install_hook",
    "reload_broker",
]

HOOK_NAME = "broker-reload.json"
MANUAL = (
    "reload the broker so it reads the new CRL (`systemctl reload mosquitto`, or "
    "`kill -HUP` its pid); `edgeflux cloud broker-config --home ... --reload-hook "
    "systemd|pid-file` makes revocations do this themselves"
)


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


def hook_path(home: CloudHome) -> Path:
    return home.root / HOOK_NAME


def install_hook(home: CloudHome, hook: ReloadHook) -> Path:
    """Record how to reload the broker (written by ``broker-config --reload-hook``)."""
    if hook.kind not in ("systemd", "pid-file", "none"):
        raise BrokerReloadError(f"reload hook {hook.kind!r}: expected systemd or pid-file")
    path = hook_path(home)
    raw = {"kind": hook.kind, "target": hook.target, "crl_copy": hook.crl_copy}
    atomic_write_text(path, json.dumps(raw) + "\n")
    return path


def _load_hook(home: CloudHome) -> ReloadHook | None:
    path = hook_path(home)
    try:
        raw = json.loads(path.read_text())
        return ReloadHook(str(raw["kind"]), str(raw["target"]), str(raw.get("crl_copy", "")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerReloadError(f"{path} is not a reload hook: {exc}") from exc


def reload_broker(home: CloudHome) -> str | None:
    """Run the recorded hook; what was done, or None when no hook is installed."""
    hook = _load_hook(home)
    if hook is None:
        return None
    if hook.crl_copy:
        try:
            refresh_crl_copy(home.crl, Path(hook.crl_copy))
        except OSError as exc:
            msg = f"cannot refresh the broker's CRL {hook.crl_copy}: {exc}"
            raise BrokerReloadError(msg) from exc
    if hook.kind == "none":
        return None
    if hook.kind == "systemd":
        argv = ["systemctl", "reload", hook.target]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerReloadError(f"{' '.join(argv)} failed: {exc}") from exc
        if done.returncode != 0:
            raise BrokerReloadError(
                f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:300]}"
            )
        return f"broker reloaded ({' '.join(argv)})"
    try:
        pid = int(Path(hook.target).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise BrokerReloadError(f"cannot signal the broker from {hook.target}: {exc}") from exc
    return f"broker reloaded (SIGHUP to pid {pid})"


def close_session(home: CloudHome, identity: str, timeout_s: float = 10.0) -> None:
    """Connect once as `identity` (clean session) so the broker drops its connection."""
    from cloud.mqtt import CloudMqtt, CloudMqttError, CloudMqttSettings

    url = home.config().broker_url
    if not url:
        raise BrokerReloadError("no broker_url in the home's cloud.toml: no broker to tell")
    u = urllib.parse.urlparse(url)
    if u.scheme != "mqtts" or not u.hostname:
        raise BrokerReloadError(f"broker_url {url!r} is not mqtts://host:port")
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-close-"))
    try:
        creds = home.load_ca().issue_session_closer(identity)
        crt, key = creds.write(tmp, "closer")
        settings = CloudMqttSettings(
            host=u.hostname,
            port=u.port or 8883,
            ca=home.ca_cert,
            cert=crt,
            key=key,
            client_id=identity,
        )
        client = CloudMqtt(settings, clean_session=True)
        try:
            client.start(timeout_s=timeout_s)
        finally:
            client.stop()
    except (HomeError, PKIError, CloudMqttError, OSError) as exc:
        raise BrokerReloadError(f"could not close {identity}'s MQTT session: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def apply_revocation(home: CloudHome, identity: str) -> list[str]:
    """Reload the broker and close `identity`'s session; lines for the operator."""
    try:
        done = reload_broker(home)
    except BrokerReloadError as exc:
        return [f"warning: {exc}; {MANUAL}"]
    if done is None:
        return [f"note: {MANUAL}"]
    lines = [done]
    try:
        close_session(home, identity)
        lines.append(f"closed {identity}'s MQTT connection")
    except BrokerReloadError as exc:
        lines.append(f"warning: {exc}")
    return lines
