"""Mosquitto configuration for the fleet: ``edgeflux cloud broker-config``.

What it writes:

- a TLS listener that **requires a client certificate** signed by the fleet CA and
  takes the MQTT username **and client id** from the certificate CN
  (``use_identity_as_username``, ``use_username_as_clientid``), so a client cannot
  claim another identity nor take over another's session; ``allow_anonymous false``;
  an optional CRL so a revoked device is refused at the handshake;
- an ACL file: a device (``%u`` = its CN) may publish only its own ``telemetry``,
  ``events`` and ``state`` and read only its own ``updates``; the ingest identity
  identities (``edgeflux-ingest``, more with ``--ingest-identity``) read every
  device's uplink topics (directly or through ``$share/edgeflux-ingest/...``) and the
  publisher (``edgeflux-push``) writes ``updates``. Those names start with the
  reserved ``edgeflux``, which no device or operator certificate can have;
- queue limits sized for ingest: Mosquitto's default ``max_queued_messages 1000``
  silently drops QoS 1 messages to a subscriber that falls behind ("Outgoing
  messages are being dropped") — the ingest session needs a deep queue.

Usage::

    edgeflux cloud broker-config --out /etc/mosquitto/conf.d/edgeflux \\
        --ca fleet-ca.crt --cert broker.crt --key broker.key --port 8883
    mosquitto -c /etc/mosquitto/conf.d/edgeflux/mosquitto.conf
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click

from cloud.home import FILES_IDENTITY, INGEST_IDENTITY, PUBLISHER_IDENTITY
from cloud.pki import RESERVED_PREFIX
from runtime.atomicio import atomic_write_text

__all__ = [
    "FILES_IDENTITY",
    "INGEST_IDENTITY",
    "PUBLISHER_IDENTITY",
    "BrokerConfig",
    "BrokerConfigError",
    "acl_text",
    "broker_config",
    "mosquitto_conf_text",
    "write_broker_config",
]

PREFIX = "edgeflux/v1/devices"
# The plane's MQTT clients have certificates of their own (cloud.home.service_identity):
# ingest and the hint publisher. Names starting with "edgeflux" are reserved for them.
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BrokerConfigError(ValueError):
    """A broker-config input is missing or invalid; the message names it."""


@dataclass(frozen=True)
class BrokerConfig:
    ca: Path
    cert: Path
    key: Path
    port: int = 8883
    bind: str = "0.0.0.0"
    crl: Path | None = None
    ingest_identity: str = INGEST_IDENTITY
    publisher_identity: str = PUBLISHER_IDENTITY
    files_identity: str = FILES_IDENTITY
    """The plane's file responder: reads every device's ``files/req``, answers on ``files/resp``."""
    more_ingest_identities: tuple[str, ...] = ()
    """Further ingest replicas (``cloud ingest --client-id``), each its own certificate."""
    max_queued_messages: int = 100_000
    """Per-client queue (QoS 1 messages) before Mosquitto drops; the default 1000 is too
    small for an ingest subscriber that pauses for a batched database write."""
    max_inflight_messages: int = 100
    persistence_dir: Path | None = None
    """Where the broker persists sessions and queued messages; None = in memory."""
    pid_file: Path | None = None
    """Where Mosquitto writes its pid (for the ``pid-file`` reload hook)."""
    run_as: str | None = None
    """The user Mosquitto drops to when started as root (``user``); None: its default."""

    @property
    def ingest_identities(self) -> tuple[str, ...]:
        return (self.ingest_identity, *self.more_ingest_identities)

    def validate(self) -> None:
        for label, p in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key)):
            if not Path(p).is_file():
                raise BrokerConfigError(f"{label} {p} does not exist or is not a file")
        if self.crl is not None and not Path(self.crl).is_file():
            raise BrokerConfigError(f"--crl {self.crl} does not exist or is not a file")
        if not 0 < self.port < 65536:
            raise BrokerConfigError(f"--port {self.port} is not a TCP port (1-65535)")
        for label, ident in (
            *(("--ingest-identity", i) for i in self.ingest_identities),
            ("--publisher-identity", self.publisher_identity),
            ("files identity", self.files_identity),
        ):
            if not _IDENTITY.match(ident):
                raise BrokerConfigError(f"{label} {ident!r} is not a valid certificate CN")
            if not ident.startswith(f"{RESERVED_PREFIX}-"):
                raise BrokerConfigError(
                    f"{label} {ident!r} must start with {RESERVED_PREFIX + '-'!r} (names "
                    "no device or operator can be issued)"
                )
        if self.max_queued_messages < 1000:
            raise BrokerConfigError(
                f"--max-queued-messages {self.max_queued_messages} is below Mosquitto's "
                "default of 1000; ingest would lose QoS 1 messages while it writes"
            )


def acl_text(cfg: BrokerConfig) -> str:
    """The Mosquitto ACL file. Patterns substitute ``%u`` = the certificate CN."""
    grants: dict[str, list[str]] = {}
    for ident in cfg.ingest_identities:
        for kind in ("telemetry", "events", "state"):
            grants.setdefault(ident, []).append(f"topic read {PREFIX}/+/{kind}")
    grants.setdefault(cfg.publisher_identity, [])
    for line in (f"topic write {PREFIX}/+/updates", f"topic read {PREFIX}/+/state"):
        if line not in grants[cfg.publisher_identity]:
            grants[cfg.publisher_identity].append(line)
    files = grants.setdefault(cfg.files_identity, [])
    files += [f"topic read {PREFIX}/+/files/req", f"topic write {PREFIX}/+/files/resp"]
    lines = [
        "# Generated by `edgeflux cloud broker-config`. Identities come from certificate CNs.",
        "# Devices: publish only under their own id, read only their own updates.",
        f"pattern write {PREFIX}/%u/telemetry",
        f"pattern write {PREFIX}/%u/events",
        f"pattern write {PREFIX}/%u/state",
        f"pattern read {PREFIX}/%u/updates",
        "# Update files in blocks (robots that cannot reach the plane's gRPC port).",
        f"pattern write {PREFIX}/%u/files/req",
        f"pattern read {PREFIX}/%u/files/resp",
        "",
        "# Control plane: ingest reads every device's uplink (directly or through",
        "# $share/edgeflux-ingest/...); push writes update hints.",
    ]
    for user, topics in grants.items():
        lines += [f"user {user}", *topics, ""]
    return "\n".join(lines)


def mosquitto_conf_text(cfg: BrokerConfig, acl_path: Path) -> str:
    lines = [
        "# Generated by `edgeflux cloud broker-config`.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl_path}",
        f"max_queued_messages {cfg.max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {cfg.max_inflight_messages}",
        "",
        f"listener {cfg.port} {cfg.bind}",
        "protocol mqtt",
        f"cafile {cfg.ca}",
        f"certfile {cfg.cert}",
        f"keyfile {cfg.key}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        # The client id is the certificate's name too: nobody can connect with another
        # identity's client id and take its session (and queued messages) over.
        "use_username_as_clientid true",
    ]
    if cfg.crl is not None:
        lines.append(f"crlfile {cfg.crl}")
    if cfg.pid_file is not None:
        lines.append(f"pid_file {cfg.pid_file}")
    if cfg.run_as is not None:
        lines.append(f"user {cfg.run_as}")
    if cfg.persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {cfg.persistence_dir}/"]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"


def write_broker_config(cfg: BrokerConfig, out_dir: Path) -> tuple[Path, Path]:
    """Validate, then write ``mosquitto.conf`` and ``acl`` atomically into `out_dir`."""
    cfg.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    acl = out_dir.resolve() / "acl"
    conf = out_dir.resolve() / "mosquitto.conf"
    atomic_write_text(acl, acl_text(cfg), mode=0o644)
    atomic_write_text(conf, mosquitto_conf_text(cfg, acl), mode=0o644)
    return conf, acl


def _abs(p: str | None) -> Path | None:
    return Path(p).resolve() if p else None


@click.command("broker-config")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write mosquitto.conf and acl into.",
)
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False),
    envvar="EDGEFLUX_CLOUD_HOME",
    help="Control-plane home: --ca/--cert/--key default to its CA and server certificate.",
)
@click.option("--ca", type=click.Path(dir_okay=False), help="Fleet CA certificate (PEM).")
@click.option("--cert", type=click.Path(dir_okay=False), help="Broker server certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False), help="Broker server key (PEM).")
@click.option("--crl", type=click.Path(dir_okay=False), help="Certificate revocation list (PEM).")
@click.option("--port", default=8883, show_default=True, type=int)
@click.option("--bind", default="0.0.0.0", show_default=True)
@click.option(
    "--ingest-identity",
    "ingest_identities",
    multiple=True,
    default=(INGEST_IDENTITY,),
    show_default=True,
    help="Certificate name of an ingest client (repeatable: one per `cloud ingest` replica).",
)
@click.option("--publisher-identity", default=PUBLISHER_IDENTITY, show_default=True)
@click.option("--max-queued-messages", default=100_000, show_default=True, type=int)
@click.option("--persistence-dir", type=click.Path(file_okay=False))
@click.option(
    "--reload-hook",
    type=click.Choice(["systemd", "pid-file"]),
    help="With --home: how revocations reload this broker at once — `systemctl reload "
    "<--systemd-unit>`, or SIGHUP to the pid Mosquitto writes into --out/mosquitto.pid.",
)
@click.option("--systemd-unit", default="mosquitto.service", show_default=True)
@click.option(
    "--run-as",
    default="mosquitto",
    show_default=True,
    help="The user Mosquitto runs as after starting as root; the TLS files are copied "
    "into --out/tls readable by it (the plane's home stays 0700).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def broker_config(
    out_dir: str,
    home_dir: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    crl: str | None,
    port: int,
    bind: str,
    ingest_identities: tuple[str, ...],
    publisher_identity: str,
    max_queued_messages: int,
    persistence_dir: str | None,
    reload_hook: str | None,
    systemd_unit: str,
    run_as: str,
    as_json: bool,
) -> None:
    """Write a Mosquitto configuration: mTLS listener, identity from the certificate,
    per-device ACLs and queue limits sized for ingest."""
    if home_dir:
        from cloud.home import CloudHome

        home = CloudHome.at(home_dir)
        shared = home.shared_names()
        if shared:
            raise click.ClickException(
                f"{', '.join(shared)}: both an operator and a device in {home.root}; the "
                "broker knows clients by name only, so revoke the operator certificate "
                "(`cloud operator revoke NAME`) and remove it from pki/operators first. "
                "Nothing was written."
            )
        ca = ca or str(home.ca_cert)
        cert = cert or str(home.server_cert)
        key = key or str(home.server_key)
    if reload_hook and not home_dir:
        raise click.ClickException("--reload-hook needs --home (the hook is kept there)")
    pid_file = Path(out_dir).resolve() / "mosquitto.pid" if reload_hook == "pid-file" else None
    missing = [n for n, v in (("--ca", ca), ("--cert", cert), ("--key", key)) if not v]
    if missing:
        raise click.ClickException(
            f"{', '.join(missing)} not given: pass them or --home of a control plane"
        )
    assert ca and cert and key
    from cloud.broker_files import BrokerFilesError, copy_tls_files, own_dir

    out = Path(out_dir).resolve()
    sources = {"ca": Path(ca), "cert": Path(cert), "key": Path(key)}
    if crl and home_dir:  # the plane rewrites its CRL; revocations refresh this copy
        sources["crl"] = Path(crl)
    try:
        for label, p in sources.items():
            if not p.is_file():
                raise BrokerConfigError(f"--{label} {p} does not exist or is not a file")
        out.mkdir(parents=True, exist_ok=True)
        tls = copy_tls_files(out, sources, run_as)
        if persistence_dir:
            own_dir(Path(persistence_dir).resolve(), run_as)
    except (BrokerConfigError, BrokerFilesError) as exc:
        raise click.ClickException(f"{exc}. Nothing was written.") from exc
    crl_path = tls.get("crl") or _abs(crl)
    cfg = BrokerConfig(
        ca=tls["ca"],
        cert=tls["cert"],
        key=tls["key"],
        port=port,
        bind=bind,
        crl=crl_path,
        run_as=run_as,
        ingest_identity=ingest_identities[0] if ingest_identities else INGEST_IDENTITY,
        more_ingest_identities=tuple(ingest_identities[1:]),
        publisher_identity=publisher_identity,
        max_queued_messages=max_queued_messages,
        persistence_dir=_abs(persistence_dir),
        pid_file=pid_file,
    )
    try:
        conf, acl = write_broker_config(cfg, Path(out_dir))
    except BrokerConfigError as exc:
        raise click.ClickException(f"{exc}. Nothing was written.") from exc
    hook_file = None
    if reload_hook and home_dir:
        from cloud.broker_reload import ReloadHook, install_hook
        from cloud.home import CloudHome

        target = str(pid_file) if pid_file is not None else systemd_unit
        hook = ReloadHook(reload_hook, target, str(tls["crl"]) if "crl" in tls else "")
        hook_file = install_hook(CloudHome.at(home_dir), hook)
    elif "crl" in tls and home_dir:
        from cloud.broker_reload import ReloadHook, install_hook
        from cloud.home import CloudHome

        hook_file = install_hook(CloudHome.at(home_dir), ReloadHook("none", "", str(tls["crl"])))
    if as_json:
        import json

        info = {"config": str(conf), "acl": str(acl)}
        if hook_file is not None:
            info["reload_hook"] = str(hook_file)
        click.echo(json.dumps(info))
    else:
        click.echo(f"wrote {conf}\nwrote {acl}\nstart with: mosquitto -c {conf}")
        if hook_file is not None:
            click.echo(f"revocations reload the broker ({reload_hook}; {hook_file})")
