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
