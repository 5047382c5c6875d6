"""Mosquitto configuration for the fleet: ``edgeflux cloud broker-config``.

What it writes:

- a TLS listener that **requires a client certificate** signed by the fleet CA and
  takes the MQTT username **and client id** from the certificate's whole subject
  (``use_subject_as_username``, ``use_username_as_clientid``): the subject carries
  the role (``OU=device``, ``OU=operator``, ``OU=service``), so a client cannot
  claim another identity, another role, nor take over another's session;
  ``allow_anonymous false``; an optional CRL so a revoked device is refused at the
  handshake;
- every identity's rights, named by its exact subject, in the document of Mosquitto's
  dynamic-security plugin (``--authz dynsec``, the default: a refused subscription is
  answered 0x87, rights change without a reload) or in an ACL file (``--authz
  acl-file``): a device
  (``O=EdgeFlux fleet,OU=device,CN=<id>``) may publish only its own ``telemetry``,
  ``events`` and ``state`` and read only its own ``updates``; the ingest
  identities (``edgeflux-ingest``, more with ``--ingest-identity``, ``OU=service``)
  read every device's uplink topics (directly or through
  ``$share/edgeflux-ingest/...``) and the publisher (``edgeflux-push``) writes
  ``updates``. Any other subject — an operator, a certificate of the wrong role with
  a device's name — has no rights at all. The device list comes from the plane's
  home (``--home``: every certificate under ``pki/devices`` not in the CRL) or from
  ``--device``; ``cloud device add`` and ``revoke`` rewrite the ACL and reload the
  broker (:mod:`cloud.broker_reload`);
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
from typing import TYPE_CHECKING

import click

from cloud.broker_dynsec import DEFAULT_PLUGIN
from cloud.broker_grants import (
    Grantee,
    device_grantee,
    service_grantees,
)
from cloud.home import FILES_IDENTITY, INGEST_IDENTITY, PUBLISHER_IDENTITY
from cloud.pki import ID_PATTERN, RESERVED_PREFIX, subject_for

if TYPE_CHECKING:
    from cloud.home import CloudHome
from runtime.atomicio import atomic_write_text

__all__ = [
    "FILES_IDENTITY",
    "INGEST_IDENTITY",
    "PUBLISHER_IDENTITY",
    "BrokerConfig",
    "BrokerConfigError",
    "acl_text",
    "broker_config",
    "home_devices",
    "mosquitto_conf_text",
    "render_acl",
    "write_broker_config",
]

AUTHZ = ("acl-file", "dynsec")
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
    devices: tuple[str, ...] = ()
    """Every device id the broker accepts (the ACL names each one's subject)."""
    authz: str = "dynsec"
    """``dynsec`` (Mosquitto's dynamic-security plugin: refused subscriptions answered
    0x87, rights changed without a reload) or ``acl-file`` (its ``acl_file``)."""
    dynsec_plugin: Path | None = DEFAULT_PLUGIN
    """The plugin library (``authz == "dynsec"``)."""

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
        ):
            if not _IDENTITY.match(ident):
                raise BrokerConfigError(f"{label} {ident!r} is not a valid certificate CN")
            if not ident.startswith(f"{RESERVED_PREFIX}-"):
                raise BrokerConfigError(
                    f"{label} {ident!r} must start with {RESERVED_PREFIX + '-'!r} (names "
                    "no device or operator can be issued)"
                )
        for dev in self.devices:
            if not ID_PATTERN.match(dev) or dev.lower().startswith(RESERVED_PREFIX):
                raise BrokerConfigError(f"--device {dev!r} is not a valid device id")
        if self.authz not in AUTHZ:
            raise BrokerConfigError(f"--authz {self.authz!r}: expected one of {', '.join(AUTHZ)}")
        if self.authz == "dynsec" and not (self.dynsec_plugin and self.dynsec_plugin.is_file()):
            raise BrokerConfigError(
                f"--dynsec-plugin {self.dynsec_plugin} does not exist: install Mosquitto's "
                "dynamic-security plugin (Debian: package mosquitto) or use --authz acl-file"
            )
        if self.max_queued_messages < 1000:
            raise BrokerConfigError(
                f"--max-queued-messages {self.max_queued_messages} is below Mosquitto's "
                "default of 1000; ingest would lose QoS 1 messages while it writes"
            )


def _block(g: Grantee) -> list[str]:
    lines = [f"user {g.username}"]
    lines += [f"topic {access} {t}" for access, t in g.topics()]
    return [*lines, ""]


def acl_text(cfg: BrokerConfig) -> str:
    """The Mosquitto ACL file: one ``user`` block per identity, named by its subject."""
    return render_acl(cfg.ingest_identities, cfg.publisher_identity, cfg.devices)


def render_acl(
    ingest_identities: tuple[str, ...],
    publisher_identity: str,
    devices: tuple[str, ...],
    files_identity: str = FILES_IDENTITY,
) -> str:
    """:func:`acl_text` from its inputs alone (what a revocation rewrites)."""
    lines = [
        "# Generated by `edgeflux cloud broker-config`; rewritten by `cloud device add`",
        "# and `revoke`. Each client is named by its certificate's subject, role included;",
        "# a subject not listed here may do nothing.",
        "",
        "# Control plane: ingest reads every device's uplink (directly or through",
        "# $share/edgeflux-ingest/...); push writes update hints.",
    ]
    for g in service_grantees(ingest_identities, publisher_identity, files_identity):
        lines += _block(g)
    lines.append("# Devices: publish only under their own id, read only their own updates.")
    for dev in dict.fromkeys(devices):
        lines += _block(device_grantee(dev))
    return "\n".join(lines)


def home_devices(home: CloudHome) -> tuple[str, ...]:
    """The device ids of `home` the broker should accept: every certificate under
    ``pki/devices`` whose serial is not in the home's CRL, in name order.

    Raises BrokerConfigError for a certificate whose subject is not the one this
    plane issues (the broker could not name it in the ACL)."""
    from cryptography import x509

    revoked: set[int] = set()
    if home.crl.is_file():
        try:
            crl = x509.load_pem_x509_crl(home.crl.read_bytes())
        except ValueError as exc:
            raise BrokerConfigError(f"{home.crl} is not a PEM CRL: {exc}") from exc
        revoked = {r.serial_number for r in crl}
    out = []
    for path in sorted(home.devices.glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError as exc:
            raise BrokerConfigError(f"{path} is not a PEM certificate: {exc}") from exc
        if cert.serial_number in revoked:
            continue
        if cert.subject != subject_for("device", path.stem):
            raise BrokerConfigError(
                f"{path}: subject {cert.subject.rfc4514_string()!r} is not the device "
                f"subject this plane issues for {path.stem!r}"
            )
        out.append(path.stem)
    return tuple(out)


def mosquitto_conf_text(cfg: BrokerConfig, acl_path: Path) -> str:
    """The configuration; `acl_path` is the ACL file, or with ``authz == "dynsec"`` the
    plugin's document."""
    if cfg.authz == "dynsec":
        authz = [f"plugin {cfg.dynsec_plugin}", f"plugin_opt_config_file {acl_path}"]
    else:
        authz = [f"acl_file {acl_path}"]
    lines = [
        "# Generated by `edgeflux cloud broker-config`.",
        "per_listener_settings false",
        "allow_anonymous false",
        *authz,
        f"max_queued_messages {cfg.max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {cfg.max_inflight_messages}",
        # Without it a large message (a block of an update file) waits on Nagle and
        # the client's delayed ACK: ~40 ms a message, 30x slower block fetches.
        "set_tcp_nodelay true",
        "",
        f"listener {cfg.port} {cfg.bind}",
        "protocol mqtt",
        f"cafile {cfg.ca}",
        f"certfile {cfg.cert}",
        f"keyfile {cfg.key}",
        "tls_version tlsv1.2",
        "require_certificate true",
        # The username is the certificate's whole subject (role included), and the
        # client id is that too: nobody can connect with another identity's client id
        # and take its session (and queued messages) over.
        "use_subject_as_username true",
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
    """Validate, then write ``mosquitto.conf`` and ``acl`` atomically into `out_dir`
    (with ``authz == "dynsec"``: ``dynsec/dynsec.json`` instead of ``acl``, in a
    directory the broker may write, as the plugin saves every change there)."""
    cfg.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    conf = out_dir.resolve() / "mosquitto.conf"
    if cfg.authz == "dynsec":
        import json

        from cloud.broker_dynsec import dynsec_document
        from cloud.broker_files import own_dir, own_file
        from cloud.mqtt import SHARE_GROUP

        acl = out_dir.resolve() / "dynsec" / "dynsec.json"
        own_dir(acl.parent, cfg.run_as)
        doc = dynsec_document(
            cfg.ingest_identities, cfg.publisher_identity, cfg.devices, (SHARE_GROUP,)
        )
        atomic_write_text(acl, json.dumps(doc, indent=1) + "\n", mode=0o600)
        own_file(acl, cfg.run_as)
    else:
        acl = out_dir.resolve() / "acl"
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
@click.option(
    "--device",
    "devices",
    multiple=True,
    help="A device id the broker accepts (repeatable). With --home: every device of the "
    "home that is not revoked, and `cloud device add`/`revoke` keep the ACL current.",
)
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
@click.option(
    "--authz",
    type=click.Choice(AUTHZ),
    default="dynsec",
    show_default=True,
    help="How the broker authorises: `acl-file` (Mosquitto's acl_file: every subscription "
    "is answered granted and filtered at delivery; device add/revoke reload the broker) or "
    "`dynsec` (its dynamic-security plugin: refused subscriptions are answered 0x87, and "
    "with --home device add/revoke change rights through its control topic, no reload).",
)
@click.option(
    "--dynsec-plugin",
    default=str(DEFAULT_PLUGIN),
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Mosquitto's dynamic-security plugin library (with --authz dynsec).",
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
    devices: tuple[str, ...],
    max_queued_messages: int,
    persistence_dir: str | None,
    reload_hook: str | None,
    systemd_unit: str,
    run_as: str,
    authz: str,
    dynsec_plugin: str,
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
        try:
            devices = tuple(dict.fromkeys((*home_devices(home), *devices)))
        except BrokerConfigError as exc:
            raise click.ClickException(f"{exc}. Nothing was written.") from exc
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
        if authz == "dynsec" and not Path(dynsec_plugin).is_file():
            raise BrokerConfigError(
                f"--dynsec-plugin {dynsec_plugin} does not exist: install Mosquitto's "
                "dynamic-security plugin (Debian: package mosquitto) or use --authz acl-file"
            )
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
        devices=devices,
        authz=authz,
        dynsec_plugin=Path(dynsec_plugin),
    )
    try:
        conf, acl = write_broker_config(cfg, Path(out_dir))
    except BrokerConfigError as exc:
        raise click.ClickException(f"{exc}. Nothing was written.") from exc
    hook_file = None
    if home_dir:
        from cloud.broker_hook import ReloadHook, install_hook
        from cloud.home import CloudHome

        target = str(pid_file) if pid_file is not None else systemd_unit
        home = CloudHome.at(home_dir)
        dynsec = authz == "dynsec"
        if dynsec:  # the plane's certificate for the plugin's control topic
            from cloud.broker_dynsec import ADMIN_IDENTITY

            home.service_identity(ADMIN_IDENTITY)
        hook = ReloadHook(
            reload_hook or "none",
            target if reload_hook else "",
            str(tls["crl"]) if "crl" in tls else "",
            acl="" if dynsec else str(acl),
            ingest_identities=cfg.ingest_identities,
            publisher_identity=cfg.publisher_identity,
            dynsec=str(acl) if dynsec else "",
            broker=f"{'127.0.0.1' if bind in ('0.0.0.0', '::', '') else bind}:{port}",
        )
        hook_file = install_hook(home, hook)
    if as_json:
        import json

        info = {"config": str(conf), "acl" if authz == "acl-file" else "dynsec": str(acl)}
        if hook_file is not None:
            info["reload_hook"] = str(hook_file)
        click.echo(json.dumps(info))
    else:
        click.echo(f"wrote {conf}\nwrote {acl}\nstart with: mosquitto -c {conf}")
        click.echo(f"{len(devices)} device(s) in the {'ACL' if authz == 'acl-file' else 'plugin'}")
        if hook_file is not None and authz == "dynsec":
            click.echo(
                "device add/revoke change the broker's rights through its dynamic-security "
                "control topic (no reload); a revocation still reloads the broker for the "
                + (f"CRL ({reload_hook})" if reload_hook else "CRL: pass --reload-hook")
            )
        elif hook_file is not None and reload_hook:
            click.echo(
                f"device add/revoke rewrite the ACL and reload the broker ({reload_hook}; "
                f"{hook_file})"
            )
        elif hook_file is not None:
            click.echo(
                "device add/revoke rewrite the ACL; reload the broker after them "
                "(or pass --reload-hook systemd|pid-file)"
            )
