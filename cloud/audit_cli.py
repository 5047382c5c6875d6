"""``edgeflux cloud audit``: the plane's audit log, newest first.

Every change the plane makes is recorded with who made it (device added, desired
state set, bundle published, ...), and so is every device a push or rollout left out
because it already runs that sequence or a newer one (``push.dropped``, with the
reason and the sequence to use).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cloud._cli_common import home_option, load_home, open_store

__all__ = ["audit_cmd"]

SCAN_LIMIT = 10_000


@click.command("audit")
@home_option
@click.option("--action", default="", help="Only this action, e.g. push.dropped.")
@click.option("--target", default="", help="Only entries about this device, bundle or rollout.")
@click.option("--limit", type=click.IntRange(1, SCAN_LIMIT), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def audit_cmd(home_dir: Path, action: str, target: str, limit: int, as_json: bool) -> None:
    """Show the audit log, newest first (who did what; why a push left a device out)."""
    from cloud.store import StoreError

    store = open_store(load_home(home_dir))
    try:
        entries = store.audit_log(limit=SCAN_LIMIT if (action or target) else limit)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    picked = [
        e
        for e in entries
        if (not action or e.action == action) and (not target or e.target == target)
    ][:limit]
    if as_json:
        rows = [
            {
                "at": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in picked
        ]
        click.echo(json.dumps(rows, sort_keys=True))
        return
    if not picked:
        click.echo("no audit entries" + (" match" if action or target else ""))
    for e in picked:
        detail = e.detail or {}
        why = detail.get("detail") if isinstance(detail.get("detail"), str) else ""
        click.echo(
            f"{e.at.isoformat(timespec='seconds')}  {e.actor:<16} {e.action:<20} {e.target}"
            + (f"  {why}" if why else "")
        )
