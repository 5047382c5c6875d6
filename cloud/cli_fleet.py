"""`edgeflux cloud device`, `devices`, `operator` and `crl`: the fleet's identities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloud._cli_common import home_option, load_home, open_store

if TYPE_CHECKING:
    from cloud.home import CloudHome

__all__ = ["crl_cmd", "device_group", "devices_cmd", "operator_group"]


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

    home = load_home(home_dir)
    parsed = _parse_labels(labels)
    taken = home.identity_taken(device_id, "device")
    if taken:
        raise click.ClickException(f"{taken}; nothing was issued")
    try:
        creds = home.load_ca().issue_device(device_id)
    except (PKIError, HomeError) as exc:
        raise click.ClickException(str(exc)) from exc
    store = open_store(home)
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
    from cloud.broker_reload import apply_device_added

    for line in apply_device_added(home, device_id):  # the broker's ACL names each device
        click.echo(line, err=line.startswith(("warning", "note")))


@device_group.command("revoke")
@click.argument("device_id")
@home_option
def device_revoke_cmd(device_id: str, home_dir: Path) -> None:
    """Revoke DEVICE_ID: the control plane refuses its certificate from the next call on."""
    from cloud.store import NotFoundError, StoreError

    home = load_home(home_dir)
    store = open_store(home)
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


def _tell_broker(home: CloudHome, identity: str) -> None:
    """Reload the broker (new CRL) and close the revoked identity's connection."""
    from cloud.broker_reload import apply_revocation

    for line in apply_revocation(home, identity):
        click.echo(line, err=line.startswith(("warning", "note")))


def _refresh_crl(home: CloudHome, revoked: set[str]) -> bool:
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
    home = load_home(home_dir)
    store = open_store(home)
    try:
        page = store.list_devices(sel, limit=limit)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    rows: list[dict[str, Any]] = [
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

    home = load_home(home_dir)
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


def _device_named(home: CloudHome, name: str) -> str | None:
    """A device registered in the store under `name` (also one revoked or flashed elsewhere)."""
    from cloud.store import StoreError

    store = open_store(home)
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

    home = load_home(home_dir)
    crt, _ = home.operator_paths(name)
    try:
        fp = fingerprint(crt.read_bytes())
    except FileNotFoundError as exc:
        raise click.ClickException(f"no operator {name!r} in {home.operators}") from exc
    except (ValueError, PKIError) as exc:
        raise click.ClickException(f"{crt} is not a certificate: {exc}") from exc
    store = open_store(home)
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

    home = load_home(home_dir)
    store = open_store(home)
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
