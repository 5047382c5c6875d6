"""`edgeflux cloud init`, `up`, `publish`, `bundles` and `tuf`: the plane and its bundles."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cloud._cli_common import home_option, load_home, open_store

__all__ = ["bundles_cmd", "init_cmd", "publish_cmd", "tuf_group", "up_cmd"]


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

    home = load_home(home_dir)
    overrides = {"listen_host": listen_host, "grpc_port": grpc_port, "metrics_port": metrics_port}
    try:
        control = ControlPlane(
            home,
            overrides,
            broker=broker,
            ingest=ingest,
            files_over_mqtt=None,  # whenever there is a broker
            factories=PLANE_SERVICES,
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

    home = load_home(home_dir)
    store = open_store(home)
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

    home = load_home(home_dir)
    store = open_store(home)
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

    home = load_home(home_dir)
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

    home = load_home(home_dir)
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
