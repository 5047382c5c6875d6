"""`edgeflux cloud window set|list|remove`: maintenance windows per label selector."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path

import click

from cloud._cli_common import home_option, load_home, open_store
from cloud.store.windows import WindowStore
from runtime.maintenance_window import MaintenanceWindow, WindowError, next_opening

__all__ = ["window_group"]


def _selector(values: tuple[str, ...]) -> dict[str, str]:
    from cloud.cli_fleet import _parse_labels

    labels = _parse_labels(values)
    if not labels:
        raise click.BadParameter("give at least one key=value", param_hint="--label")
    return labels


def _utc(at: dt.datetime | None) -> str:
    if at is None:
        return "never (within 15 days)"
    return at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@click.group("window")
def window_group() -> None:
    """Maintenance windows: when devices with a label may switch to a new bundle."""


@window_group.command("set")
@click.argument("name")
@home_option
@click.option("--label", "labels", multiple=True, required=True, help="key=value (repeatable).")
@click.option("--days", required=True, help="mon-fri, sat,sun, mon-wed,fri or daily.")
@click.option("--start", required=True, help="Local opening time HH:MM (or HH:MM:SS).")
@click.option("--end", required=True, help="Local closing time; not after --start: next day.")
@click.option("--tz", required=True, help="IANA time zone, e.g. Europe/Berlin.")
def window_set_cmd(
    name: str, home_dir: Path, labels: tuple[str, ...], days: str, start: str, end: str, tz: str
) -> None:
    """Create or replace window NAME for the devices carrying every --label."""
    from cloud.store import StoreError

    selector = _selector(labels)
    try:
        window = MaintenanceWindow.build(name, days, start, end, tz)
    except WindowError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from exc
    home = load_home(home_dir)
    store = open_store(home)
    try:
        WindowStore(store.engine).put(window, selector, actor="cli")
        store.audit("cli", "window.set", name, {"labels": selector, **window.to_dict()})
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    opens = next_opening([window], dt.datetime.now(dt.UTC))
    click.echo(f"window {name}: {window.describe()} for {_fmt(selector)}; opens {_utc(opens)}")


@window_group.command("remove")
@click.argument("name")
@home_option
def window_remove_cmd(name: str, home_dir: Path) -> None:
    """Remove window NAME: its devices may switch at any time again."""
    from cloud.store import NotFoundError, StoreError

    home = load_home(home_dir)
    store = open_store(home)
    try:
        WindowStore(store.engine).remove(name)
        store.audit("cli", "window.remove", name, {})
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"removed window {name}")


@window_group.command("list")
@home_option
@click.option("--json", "as_json", is_flag=True)
def window_list_cmd(home_dir: Path, as_json: bool) -> None:
    """List the windows, with whether each is open now and when it next opens."""
    from cloud.store import StoreError

    home = load_home(home_dir)
    store = open_store(home)
    try:
        rows = WindowStore(store.engine).all()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    now = dt.datetime.now(dt.UTC)
    out = [
        {
            **r.window.to_dict(),
            "labels": r.selector,
            "open": r.window.is_open(now),
            "next_open": _utc(r.window.next_open(now)),
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps({"windows": out}, sort_keys=True))
        return
    for r, o in zip(rows, out, strict=True):
        state = "open now" if o["open"] else f"opens {o['next_open']}"
        click.echo(f"{r.window.name}  {_fmt(r.selector)}  {r.window.describe()}  {state}")
    click.echo(f"{len(rows)} window(s)")


def _fmt(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
