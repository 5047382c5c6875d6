"""What the `edgeflux cloud` commands share: the home option, the home, its store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from protos.plane_target import PlaneTarget, TargetError, plane_target

if TYPE_CHECKING:
    from cloud.home import CloudHome
    from cloud.store import Store

__all__ = ["home_option", "load_home", "open_store", "plane_address"]

home_option = click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=Path("."),
    show_default=True,
    help="Control-plane home directory (env EDGEFLUX_CLOUD_HOME).",
)


def load_home(home_dir: Path) -> CloudHome:
    from cloud.home import CloudHome, HomeError

    home = CloudHome.at(home_dir)
    try:
        home.check()
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    return home


def open_store(home: CloudHome) -> Store:
    from cloud.store import Store, StoreError

    try:
        return Store.open(home.database_url(home.config()))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def plane_address(text: str) -> PlaneTarget:
    """The gRPC target of a plane address (``HOST:PORT`` or replicas ``A:P,B:P``); a bad
    one is a usage error that names the entry."""
    try:
        return plane_target(text)
    except TargetError as exc:
        raise click.UsageError(f"--server: {exc}") from None
