"""Device changes take effect on a running Mosquitto at once, without a manual step.

The broker's ACL names every device by its certificate subject, and Mosquitto reads
its ``acl_file`` and ``crlfile`` again on SIGHUP (a reload). ``edgeflux cloud
broker-config --home`` records in the plane's home (``broker-reload.json``) where the
ACL is and how to reload the broker (``--reload-hook``: ``systemd`` runs ``systemctl
reload <unit>``, ``pid-file`` sends SIGHUP to the pid Mosquitto wrote there).

- :func:`apply_device_added` rewrites the ACL with the new device and reloads.
- :func:`apply_revocation` rewrites the ACL without the revoked device, refreshes the
  broker's CRL copy and reloads: new connections of the revoked certificate are
  refused at the handshake and, from the reload on, an open one may no longer publish
  or receive. It then closes that open connection: the broker makes a certificate's
  subject the client id (``use_username_as_clientid``), so connecting once with a
  certificate of the same subject takes the session over and the revoked client is
  disconnected. That certificate is issued for this one connection (valid 10
  minutes; the plane's gRPC refuses it, its fingerprint is not the registered one),
  lives in a private temporary directory and is deleted right after. Operators have
  no rights on the broker, so their connections need no closing.

With ``broker-config --authz dynsec`` there is no ACL file: :func:`apply_device_added`
creates the device's client and role through the dynamic-security plugin's control
topic (effective at once, no reload), and :func:`apply_revocation` deletes them (the
plugin disconnects the client; it has no rights from then on), then still refreshes
the CRL copy and reloads the broker — Mosquitto reads its ``crlfile`` only on a reload,
and until then a revoked certificate can still connect, with no rights — and closes
the session as above. When the control topic cannot be used, the document is rewritten
from the home and the caller is told to restart the broker.

Without a hook the caller is told exactly what to run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from cloud.broker_files import refresh_crl_copy
from cloud.broker_hook import BrokerReloadError, ReloadHook, hook_path, install_hook, load_hook
from cloud.home import CloudHome, HomeError
from cloud.pki import PKIError
from runtime.atomicio import atomic_write_text

__all__ = [
    "BrokerReloadError",
    "ReloadHook",
    "apply_device_added",
    "apply_revocation",
    "close_session",
    "hook_path",
    "install_hook",
    "refresh_acl",
    "reload_broker",
]

MANUAL = (
    "reload the broker so it reads the new ACL and CRL (`systemctl reload mosquitto`, or "
    "`kill -HUP` its pid); `edgeflux cloud broker-config --home ... --reload-hook "
    "systemd|pid-file` makes device add and revoke do this themselves"
)
CRL_MANUAL = (
    "reload the broker so it reads the new CRL (`systemctl reload mosquitto`, or `kill "
    "-HUP` its pid); until then the revoked certificate can still connect, with no rights"
)
RERUN = (
    "the broker configuration predates ACLs that name each identity with its role: "
    "re-run `edgeflux cloud broker-config --home ...` (same options) so the broker "
    "refuses certificates of the wrong role"
)


def refresh_acl(home: CloudHome) -> Path | None:
    """Rewrite the broker's ACL from the home's devices; its path, or None when the
    recorded hook names no ACL (no hook, or one from an older ``broker-config``)."""
    from cloud.broker_config import BrokerConfigError, home_devices, render_acl

    hook = load_hook(home)
    if hook is None or not hook.acl:
        return None
    path = Path(hook.acl)
    try:
        text = render_acl(hook.ingest_identities, hook.publisher_identity, home_devices(home))
        atomic_write_text(path, text, mode=0o644)
    except (BrokerConfigError, PKIError, OSError) as exc:
        raise BrokerReloadError(f"cannot rewrite the broker's ACL {path}: {exc}") from exc
    return path


def reload_broker(home: CloudHome) -> str | None:
    """Run the recorded hook; what was done, or None when no hook is installed."""
    hook = load_hook(home)
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

    host, port = _broker_url(home)
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-close-"))
    try:
        creds = home.load_ca().issue_session_closer(identity)
        crt, key = creds.write(tmp, "closer")
        settings = CloudMqttSettings(
            host=host,
            port=port,
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


def _broker_url(home: CloudHome) -> tuple[str, int]:
    """Where the broker listens: ``broker_url`` in ``cloud.toml``, else the listener
    the recorded hook names."""
    url = home.config().broker_url
    if not url:
        hook = load_hook(home)
        host, _, port = (hook.broker if hook is not None else "").rpartition(":")
        if host and port.isdigit():
            return host, int(port)
        raise BrokerReloadError("no broker_url in the home's cloud.toml: no broker to tell")
    u = urllib.parse.urlparse(url)
    if u.scheme != "mqtts" or not u.hostname:
        raise BrokerReloadError(f"broker_url {url!r} is not mqtts://host:port")
    return u.hostname, u.port or 8883


def _dynsec_apply(home: CloudHome, hook: ReloadHook, commands: list[dict[str, Any]]) -> str:
    """Send `commands` through the plugin's control topic; on failure rewrite the
    document from the home and raise BrokerReloadError saying to restart the broker."""
    from cloud.broker_dynsec import ADMIN_IDENTITY, DynsecError, send_commands

    try:
        host, port = _broker_url(home)
        crt, key = home.service_identity(ADMIN_IDENTITY)
        send_commands(host, port, (home.ca_cert, crt, key), commands)
        return "broker rights changed (dynamic-security control topic, no reload)"
    except (BrokerReloadError, DynsecError, HomeError, PKIError, OSError) as exc:
        why = str(exc)
    try:
        _rewrite_dynsec(home, hook)
        fix = f"rewrote {hook.dynsec}: restart the broker so it reads it"
    except BrokerReloadError as exc:
        fix = (
            f"{exc}; re-run `edgeflux cloud broker-config --home ... --authz dynsec` and "
            "restart the broker"
        )
    raise BrokerReloadError(f"the broker's dynamic-security plugin did not apply it ({why}); {fix}")


def _rewrite_dynsec(home: CloudHome, hook: ReloadHook) -> None:
    import json

    from cloud.broker_config import BrokerConfigError, home_devices
    from cloud.broker_dynsec import dynsec_document
    from cloud.mqtt import SHARE_GROUP

    path = Path(hook.dynsec)
    try:
        doc = dynsec_document(
            hook.ingest_identities, hook.publisher_identity, home_devices(home), (SHARE_GROUP,)
        )
        st = path.stat()
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n", mode=0o600)
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)
    except (BrokerConfigError, PKIError, OSError) as exc:
        raise BrokerReloadError(f"cannot rewrite the broker's document {path}: {exc}") from exc


def _acl_and_reload(home: CloudHome) -> tuple[list[str], bool]:
    """Rewrite the ACL and reload: lines for the operator, and whether it reloaded."""
    lines = []
    try:
        hook = load_hook(home)
        if hook is not None and not hook.acl:
            lines.append(f"note: {RERUN}")
        acl = refresh_acl(home)
        done = reload_broker(home)
    except BrokerReloadError as exc:
        return [*lines, f"warning: {exc}; {MANUAL}"], False
    if done is None:
        lines.append(f"note: rewrote {acl}; {MANUAL}" if acl else f"note: {MANUAL}")
        return lines, False
    return [done, *lines], True


def apply_device_added(home: CloudHome, device_id: str) -> list[str]:
    """Let the broker accept a new device (ACL rewritten, broker reloaded); lines for
    the operator. Nothing to do where no ``broker-config --home`` was run."""
    try:
        hook = load_hook(home)
    except BrokerReloadError as exc:
        return [f"warning: {exc}; {MANUAL}"]
    if hook is None:
        return []
    if hook.dynsec:
        from cloud.broker_dynsec import add_device_commands

        try:
            return [_dynsec_apply(home, hook, add_device_commands(device_id))]
        except BrokerReloadError as exc:
            return [f"warning: {exc}"]
    if not hook.acl:  # the broker's pattern ACL already lets the device in
        return [f"note: {RERUN}"]
    lines, _ = _acl_and_reload(home)
    return lines


def apply_revocation(home: CloudHome, identity: str) -> list[str]:
    """Rewrite the ACL, reload the broker and close `identity`'s session (devices
    only: operators have no rights there); lines for the operator. With the
    dynamic-security plugin the device's rights go first, through its control topic."""
    try:
        hook = load_hook(home)
    except BrokerReloadError as exc:
        return [f"warning: {exc}; {MANUAL}"]
    is_device = (home.devices / f"{identity}.crt").exists()
    if hook is not None and hook.dynsec:
        from cloud.broker_dynsec import remove_device_commands

        lines = []
        if is_device:
            try:
                lines.append(_dynsec_apply(home, hook, remove_device_commands(identity)))
            except BrokerReloadError as exc:
                lines.append(f"warning: {exc}")
        try:
            done = reload_broker(home)
            lines.append(done or f"note: {CRL_MANUAL}")
        except BrokerReloadError as exc:
            lines.append(f"warning: {exc}; {CRL_MANUAL}")
        if is_device:
            _close(home, identity, lines)
        return lines
    lines, reloaded = _acl_and_reload(home)
    if not reloaded or not is_device:
        return lines
    _close(home, identity, lines)
    return lines


def _close(home: CloudHome, identity: str, lines: list[str]) -> None:
    try:
        close_session(home, identity)
        lines.append(f"closed {identity}'s MQTT connection")
    except BrokerReloadError as exc:
        lines.append(f"warning: {exc}")
