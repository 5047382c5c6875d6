"""`edgeflux cloud ...`: create, run and administer a control plane.

Usage::

    edgeflux cloud init ./plane                      # CA, certs, TUF repo, keys, config
    edgeflux cloud up --home ./plane                 # gRPC (mTLS) + metrics + dev broker
    edgeflux cloud device add robot-1 --home ./plane --label site=lab
    edgeflux cloud devices --home ./plane --json
    edgeflux cloud publish ./bundles/pendulum-1.0.0 --home ./plane
    edgeflux cloud device revoke robot-1 --home ./plane

Subcommands are a lazy table (like the root CLI): other packages' commands are
mounted by adding one line to ``COMMANDS`` and are imported only when invoked. The
home may also come from ``EDGEFLUX_CLOUD_HOME``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import click

__all__ = ["COMMANDS", "cloud"]

# name -> (short help, "module:attribute" of a click command)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": (
        "Create a control-plane home (CA, certificates, TUF repository, keys).",
        "cloud.cli:init_cmd",
    ),
    "up": ("Run the control plane (gRPC with mTLS, metrics, broker).", "cloud.cli:up_cmd"),
    "publish": ("Verify a bundle and publish it into the TUF repository.", "cloud.cli:publish_cmd"),
    "bundles": ("List published bundles.", "cloud.cli:bundles_cmd"),
    "device": ("Add or revoke a device identity.", "cloud.cli:device_group"),
    "devices": ("List devices.", "cloud.cli:devices_cmd"),
    "crl": ("Rewrite the fleet CRL (pki/crl.pem) for the broker.", "cloud.cli:crl_cmd"),
    "tuf": ("TUF repository: rotate a role's key, show status.", "cloud.cli:tuf_group"),
    "operator": (
        "Issue an operator certificate (role admin | viewer).",
        "cloud.cli:operator_group",
    ),
    "push": ("Push a bundle to devices now (desired state + MQTT hint).", "cloud.push:push_cmd"),
    "audit": (
        "Show the audit log (who changed what; pushes left out).",
        "cloud.audit_cli:audit_cmd",
    ),
    "router": ("ATP routing: audit log verify, stats.", "cloud.router.cli:router_group"),
    "agent": ("Serve a routing backend (--kind planner|policy).", "cloud.router.worker:agent_cmd"),
    "ingest": ("Run MQTT ingest (telemetry, events, presence).", "cloud.ingest:ingest_cmd"),
    "quarantine": (
        "Show messages ingest dropped (reason, detail, payload).",
        "cloud.ingest:quarantine_cmd",
    ),
    "recordings": (
        "Flight recordings: export MCAP segments as an episode dataset (--npz).",
        "cloud.recordings.cli:recordings",
    ),
    "broker-config": (
        "Write a Mosquitto config (mTLS, certificate identity, ACLs).",
        "cloud.broker_config:broker_config",
    ),
}

home_option = click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=Path("."),
    show_default=True,
    help="Control-plane home directory (env EDGEFLUX_CLOUD_HOME).",
)


class _LazyCloud(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr = entry[1].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{entry[1]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, h) for name, (h, _) in COMMANDS.items()])


@click.group(cls=_LazyCloud)
def cloud() -> None:
    """The cloud control plane (init, up, publish, devices)."""


def _home(home_dir: Path) -> Any:
    from cloud.home import CloudHome, HomeError

    home = CloudHome.at(home_dir)
    try:
        home.check()
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    return home


def _store(home: Any) -> Any:
    from cloud.store import Store, StoreError

    try:
        return Store.open(home.database_url(home.config()))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


# ------------------------------------------------------------------------- init
@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--operator", default="admin", show_default=True, help="First operator (admin).")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="DNS name or IP for the server certificate (repeatable; default localhost, 127.0.0.1).",
)
@click.option(
    "--model-signing-pub",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Import this P-256 public key instead of generating a model-signing key pair.",
)
@click.option(
    "--attestation-pub",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Import this Ed25519 public key instead of generating an attestation key pair.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the created paths as JSON.")
def init_cmd(
    directory: Path,
    operator: str,
    hosts: tuple[str, ...],
    model_signing_pub: Path | None,
    attestation_pub: Path | None,
    as_json: bool,
) -> None:
    """Create a control-plane home in DIRECTORY (refuses to overwrite one)."""
    import os

    from cloud.home import PASSPHRASE_ENV, HomeError, init_home
    from cloud.store import Store, StoreError

    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        home = init_home(
            directory,
            operator=operator,
            server_hosts=hosts or ("localhost", "127.0.0.1"),
            ca_passphrase=passphrase.encode() if passphrase else None,
            model_signing_pub=model_signing_pub,
            attestation_pub=attestation_pub,
        )
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        Store.open(home.database_url()).close()
    except StoreError as exc:
        raise click.ClickException(f"home created, but the database is not ready: {exc}") from exc
    crt, key = home.operator_paths(operator)
    info = {
        "home": str(home.root),
        "ca_cert": str(home.ca_cert),
        "operator_cert": str(crt),
        "operator_key": str(key),
        "tuf_root": str(home.tuf / "metadata" / "root.json"),
        "config": str(home.config_file),
    }
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"created control-plane home {home.root}")
    for k, v in info.items():
        click.echo(f"  {k:<14} {v}")
    if not passphrase:
        click.echo(
            f"  the CA key passphrase is in {home.ca_passphrase_file}: move it offline and set "
            f"{PASSPHRASE_ENV} when issuing certificates"
        )


# ------------------------------------------------------------------------- devices
def _parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        labels[key] = value
    return labels


@click.group("device")
def device_group() -> None:
    """Add or revoke a device identity."""


@device_group.command("add")
@click.argument("device_id")
@home_option
@click.option("--label", "labels", multiple=True, help="key=value (repeatable).")
@click.option("--hardware-tag", "tags", multiple=True, help="Hardware tag (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def device_add_cmd(
    device_id: str, home_dir: Path, labels: tuple[str, ...], tags: tuple[str, ...], as_json: bool
) -> None:
    """Issue a certificate and key for DEVICE_ID and register it (used by flash)."""
    from cloud.home import HomeError
    from cloud.pki import PKIError, fingerprint
    from cloud.store import ConflictError, StoreError

    home = _home(home_dir)
    parsed = _parse_labels(labels)
    taken = home.identity_taken(device_id, "device")
    if taken:
        raise click.ClickException(f"{taken}; nothing was issued")
    try:
        creds = home.load_ca().issue_device(device_id)
    except (PKIError, HomeError) as exc:
        raise click.ClickException(str(exc)) from exc
    store = _store(home)
    try:
        store.add_device(device_id, fingerprint(creds.cert_pem), parsed, list(tags))
        store.audit("cli", "device.add", device_id, {"labels": parsed})
    except ConflictError as exc:
        raise click.ClickException(
            f"device {device_id!r} already exists (revoked ids stay taken); nothing was issued"
        ) from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    crt, key = creds.write(home.devices, device_id)
    info = {"device": device_id, "cert": str(crt), "key": str(key), "ca": str(home.ca_cert)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"device {device_id}: certificate {crt}, key {key} (CA {home.ca_cert})")


@device_group.command("revoke")
@click.argument("device_id")
@home_option
def device_revoke_cmd(device_id: str, home_dir: Path) -> None:
    """Revoke DEVICE_ID: the control plane refuses its certificate from the next call on."""
    from cloud.store import NotFoundError, StoreError

    home = _home(home_dir)
    store = _store(home)
    try:
        store.revoke_device(device_id, actor="cli")
        revoked = store.revoked_fingerprints()
    except NotFoundError as exc:
        raise click.ClickException(f"no device {device_id!r} in {home.root}") from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"revoked {device_id}")
    if _refresh_crl(home, revoked):
        _tell_broker(home, device_id)


def _tell_broker(home: Any, identity: str) -> None:
    """Reload the broker (new CRL) and close the revoked identity's connection."""
    from cloud.broker_reload import apply_revocation

    for line in apply_revocation(home, identity):
        click.echo(line, err=line.startswith(("warning", "note")))


def _refresh_crl(home: Any, revoked: set[str]) -> bool:
    """The control plane refuses revoked certificates already; the CRL tells the broker."""
    from cloud.home import HomeError
    from cloud.pki import PKIError

    try:
        home.write_crl(revoked)
    except (HomeError, PKIError) as exc:
        click.echo(
            f"warning: {home.crl} was not updated ({exc}); run `edgeflux cloud crl` with "
            "the CA passphrase so the broker refuses the certificate too",
            err=True,
        )
        return False
    click.echo(f"CRL updated: {home.crl}")
    return True


@click.command("devices")
@home_option
@click.option("--selector", "-l", default="", help="Label selector, e.g. site=lab,role=arm.")
@click.option("--limit", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def devices_cmd(home_dir: Path, selector: str, limit: int, as_json: bool) -> None:
    """List devices (id, labels, online, revoked, active bundle)."""
    from rich.console import Console
    from rich.table import Table

    from cloud.store import StoreError, parse_label_selector
    from protos.lifecycle import Reason

    try:
        sel = parse_label_selector(selector)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--selector") from exc
    home = _home(home_dir)
    store = _store(home)
    try:
        page = store.list_devices(sel, limit=limit)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    rows = [
        {
            "id": d.id,
            "labels": d.labels,
            "online": d.online,
            "revoked": d.revoked,
            "last_seen": d.last_seen.isoformat() if d.last_seen else None,
            "active_bundle": d.active_bundle,
            "update_state": d.update_state,
            "update_reason": d.update_reason,
            "update_detail": d.update_detail if d.update_reason not in ("", Reason.OK) else "",
        }
        for d in page.devices
    ]
    if as_json:
        click.echo(json.dumps({"devices": rows, "total": page.total}))
        return
    table = Table("id", "labels", "online", "revoked", "bundle", "update")
    for r in rows:
        b = r["active_bundle"] or {}
        reason = "" if r["update_reason"] in ("", Reason.OK) else r["update_reason"]
        table.add_row(
            r["id"],
            ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())),
            "yes" if r["online"] else "no",
            "REVOKED" if r["revoked"] else "",
            f"{b.get('name', '')} {b.get('version', '')}".strip(),
            f"{r['update_state']} ({reason})" if reason else r["update_state"],
        )
    Console().print(table)
    click.echo(f"{page.total} device(s)")
    for r in rows:  # why, as the robot reported it: one unwrapped line per device
        if r["update_detail"]:
            click.echo(
                f"{r['id']}  {r['update_state']}  {r['update_reason']}: {r['update_detail']}"
            )


# ------------------------------------------------------------------------- operators
@click.group("operator")
def operator_group() -> None:
    """Issue operator certificates."""


@operator_group.command("add")
@click.argument("name")
@home_option
@click.option("--role", type=click.Choice(["admin", "viewer"]), default="viewer", show_default=True)
def operator_add_cmd(name: str, home_dir: Path, role: str) -> None:
    """Issue an operator certificate NAME with ROLE into pki/operators/."""
    from cloud.home import HomeError
    from cloud.pki import PKIError

    home = _home(home_dir)
    crt, _ = home.operator_paths(name)
    if crt.exists():
        raise click.ClickException(f"operator {name!r} already exists ({crt}); nothing was issued")
    taken = home.identity_taken(name, "operator") or _device_named(home, name)
    if taken:
        raise click.ClickException(f"{taken}; nothing was issued")
    try:
        creds = home.load_ca().issue_operator(name, role)
    except (PKIError, HomeError) as exc:
        raise click.ClickException(str(exc)) from exc
    crt, key = creds.write(home.operators, name)
    click.echo(f"operator {name} ({role}): certificate {crt}, key {key}")


def _device_named(home: Any, name: str) -> str | None:
    """A device registered in the store under `name` (also one revoked or flashed elsewhere)."""
    from cloud.store import StoreError

    store = _store(home)
    try:
        found = store.get_device(name)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    return f"{name!r} is already a device; pick another operator name" if found else None


@operator_group.command("revoke")
@click.argument("name")
@home_option
def operator_revoke_cmd(name: str, home_dir: Path) -> None:
    """Revoke operator NAME's certificate: refused by the plane from the next call on."""
    from cloud.pki import PKIError, fingerprint
    from cloud.store import StoreError

    home = _home(home_dir)
    crt, _ = home.operator_paths(name)
    try:
        fp = fingerprint(crt.read_bytes())
    except FileNotFoundError as exc:
        raise click.ClickException(f"no operator {name!r} in {home.operators}") from exc
    except (ValueError, PKIError) as exc:
        raise click.ClickException(f"{crt} is not a certificate: {exc}") from exc
    store = _store(home)
    try:
        store.revoke_certificate(fp, f"operator:{name}", actor="cli")
        revoked = store.revoked_fingerprints()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"revoked operator {name} (certificate {fp[:16]}…)")
    if _refresh_crl(home, revoked):
        _tell_broker(home, name)


@click.command("crl")
@home_option
@click.option("--json", "as_json", is_flag=True)
def crl_cmd(home_dir: Path, as_json: bool) -> None:
    """Rewrite pki/crl.pem from the revocations in the store (for the broker's crlfile)."""
    from cloud.home import HomeError
    from cloud.pki import PKIError
    from cloud.store import StoreError

    home = _home(home_dir)
    store = _store(home)
    try:
        revoked = store.revoked_fingerprints()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    try:
        names = home.write_crl(revoked)
    except (HomeError, PKIError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"crl": str(home.crl), "revoked": names}))
    else:
        click.echo(f"wrote {home.crl}: {len(names)} revoked certificate(s)")


# ------------------------------------------------------------------------- up
@click.command("up")
@home_option
@click.option("--host", "listen_host", default=None, help="Listen address (config: listen_host).")
@click.option("--port", "grpc_port", type=int, default=None, help="gRPC port (0 = any free).")
@click.option("--metrics-port", type=int, default=None, help="Prometheus port (0 = off).")
@click.option(
    "--broker/--no-broker",
    default=None,
    help="Force the embedded dev broker on or off (default: on unless broker_url is set).",
)
@click.option(
    "--ingest/--no-ingest",
    default=None,
    help="Run MQTT ingest (telemetry, events, presence) in this process "
    "(default: on whenever there is a broker).",
)
def up_cmd(
    home_dir: Path,
    listen_host: str | None,
    grpc_port: int | None,
    metrics_port: int | None,
    broker: bool | None,
    ingest: bool | None,
) -> None:
    """Run the control plane until SIGINT/SIGTERM (graceful shutdown)."""
    import asyncio
    import signal

    from cloud.plane_services import PLANE_SERVICES
    from cloud.server.app import ControlPlane, PlaneStartError
    from runtime.config import ConfigError

    home = _home(home_dir)
    overrides = {"listen_host": listen_host, "grpc_port": grpc_port, "metrics_port": metrics_port}
    try:
        control = ControlPlane(
            home, overrides, broker=broker, ingest=ingest, factories=PLANE_SERVICES
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    async def main() -> None:
        # Handlers first: a signal during start-up stops the plane as soon as it is up.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await control.start()
        click.echo(f"control plane serving on {control.address} (Ctrl-C to stop)", err=True)
        await stop.wait()
        click.echo("stopping (finishing in-flight calls) ...", err=True)
        await control.stop(5.0)
        click.echo("control plane stopped", err=True)

    try:
        asyncio.run(main())
    except PlaneStartError as exc:
        raise click.ClickException(str(exc)) from exc


# ------------------------------------------------------------------------- publish
@click.command("publish")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@home_option
@click.option("--json", "as_json", is_flag=True)
def publish_cmd(bundle: Path, home_dir: Path, as_json: bool) -> None:
    """Verify BUNDLE (directory or .efb), store it and sign it into the TUF repository."""
    from rich.console import Console

    from cloud.publish import PublishError, chunk_reuse, publish_bundle
    from cloud.store import ConflictError, StoreError
    from cloud.tuf_repo import TufRepository

    home = _home(home_dir)
    store = _store(home)
    try:
        with Console(stderr=True).status(f"verifying and publishing {bundle} ..."):
            rec = publish_bundle(home, store, bundle, actor="cli")
    except (PublishError, ConflictError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    reuse = chunk_reuse(TufRepository(home.tuf), rec.target_path)
    info = {
        "name": rec.name,
        "version": rec.version,
        "sequence": rec.sequence,
        "target": rec.target_path,
        "sha256": rec.efb_sha256,
        "size_bytes": rec.size_bytes,
        "oms_root_digest": rec.oms_root_digest,
    }
    if reuse is not None:
        info["dedup"] = {"against": reuse[0], "ratio": reuse[1], "fetch_bytes": reuse[2]}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(
            f"published {rec.name} {rec.version} (sequence {rec.sequence}) as TUF target "
            f"{rec.target_path} sha256 {rec.efb_sha256}"
        )
        if reuse is not None:
            click.echo(
                f"dedup against {reuse[0]}: {reuse[1]:.0%} of its bytes are unchanged chunks; "
                f"a robot holding {reuse[0]} fetches {reuse[2]} bytes"
            )


@click.command("bundles")
@home_option
@click.option("--name", default=None)
@click.option("--json", "as_json", is_flag=True)
def bundles_cmd(home_dir: Path, name: str | None, as_json: bool) -> None:
    """List published bundles, newest first."""
    from cloud.store import StoreError

    home = _home(home_dir)
    store = _store(home)
    try:
        rows = store.list_bundles(name, limit=1000)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    data = [
        {
            "name": b.name,
            "version": b.version,
            "sequence": b.sequence,
            "target": b.target_path,
            "sha256": b.efb_sha256,
            "published_at": b.published_at.isoformat(),
        }
        for b in rows
    ]
    if as_json:
        click.echo(json.dumps({"bundles": data}))
        return
    for b in data:
        click.echo(f"{b['name']:<20} {b['version']:<12} seq {b['sequence']:<6} {b['target']}")


# ------------------------------------------------------------------------- tuf
@click.group("tuf")
def tuf_group() -> None:
    """The TUF repository (every key but the CA's rotates through TUF)."""


@tuf_group.command("rotate")
@click.argument("role", type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
@home_option
@click.option("--json", "as_json", is_flag=True)
def tuf_rotate_cmd(role: str, home_dir: Path, as_json: bool) -> None:
    """Replace ROLE's key; robots follow on their next TUF refresh (root chain walk)."""
    from cloud.tuf_repo import TufError, TufRepository

    home = _home(home_dir)
    cfg = home.config()
    try:
        keyid = TufRepository(home.tuf).rotate_key(
            role,
            expiry_days=cfg.metadata_expiry_days,
            timestamp_expiry_s=cfg.timestamp_expiry_s,
        )
    except TufError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"role": role, "keyid": keyid}))
    else:
        click.echo(f"rotated the {role} key: new key id {keyid}")


@tuf_group.command("status")
@home_option
@click.option("--json", "as_json", is_flag=True)
def tuf_status_cmd(home_dir: Path, as_json: bool) -> None:
    """Versions and expiry of the top-level metadata, and the number of targets."""
    from tuf.api.metadata import Metadata, Root, Timestamp

    from cloud.tuf_repo import TufRepository

    home = _home(home_dir)
    repo = TufRepository(home.tuf)
    root: Metadata[Root] = Metadata.from_bytes(repo.root_json())
    ts: Metadata[Timestamp] = Metadata.from_bytes(
        (repo.metadata_dir / "timestamp.json").read_bytes()
    )
    info = {
        "root_version": root.signed.version,
        "root_expires": root.signed.expires.isoformat(),
        "timestamp_version": ts.signed.version,
        "timestamp_expires": ts.signed.expires.isoformat(),
        "snapshot_version": ts.signed.snapshot_meta.version,
        "targets": len(repo.targets()),
    }
    if as_json:
        click.echo(json.dumps(info))
    else:
        for k, v in info.items():
            click.echo(f"{k:<18} {v}")
