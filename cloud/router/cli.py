"""`edgeflux cloud router ...`: check the audit log, look at routing from outside.

Usage::

    edgeflux cloud router audit verify --home ./plane            # state/router-audit.jsonl
    edgeflux cloud router audit verify ./audit.jsonl --key ./router-audit.pub --json
    edgeflux cloud router stats --home ./plane --json            # RouterStats over mTLS
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["router_group"]

home_option = click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=None,
    help="Control-plane home (env EDGEFLUX_CLOUD_HOME).",
)


@click.group("router")
def router_group() -> None:
    """ATP routing: audit log verification and live statistics."""


@router_group.group("audit")
def audit_group() -> None:
    """The tamper-evident routing audit log."""


@audit_group.command("verify")
@click.argument("log_path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM) that signs the tree heads.",
)
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(
    log_path: Path | None, key_path: Path | None, home_dir: Path | None, as_json: bool
) -> None:
    """Check the hash chain and every signed tree head of an audit log, end to end."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from cloud.router.audit import verify_log
    from cloud.router.errors import AuditVerificationError

    if home_dir is not None:
        log_path = log_path or home_dir / "state" / "router-audit.jsonl"
        key_path = key_path or home_dir / "keys" / "router-audit.pub"
    if log_path is None or key_path is None:
        raise click.UsageError("give LOG_PATH and --key, or --home of a control plane")
    try:
        key = serialization.load_pem_public_key(key_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the public key {key_path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise click.ClickException(f"{key_path} is not an Ed25519 public key")
    try:
        lines = log_path.read_bytes().splitlines()
    except OSError as exc:
        raise click.ClickException(f"cannot read the audit log {log_path}: {exc}") from exc
    try:
        report = verify_log(lines, key, str(log_path))
    except AuditVerificationError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "log": str(log_path), "error": str(exc)}))
        raise click.ClickException(f"audit log FAILED verification: {exc}") from exc
    out = {
        "ok": True,
        "log": str(log_path),
        "records": report.records,
        "tree_heads": report.tree_heads,
        "unsigned_tail": report.unsigned_tail,
        "root": report.root,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"OK: {report.records} records, {report.tree_heads} signed tree heads, "
            f"{report.unsigned_tail} records after the last head; root {report.root[:16]}…"
        )


@router_group.command("stats")
@home_option
@click.option("--address", help="host:port of the plane (default: from the home's config).")
@click.option("--operator", default="admin", show_default=True, help="Operator certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats_cmd(home_dir: Path | None, address: str | None, operator: str, as_json: bool) -> None:
    """Backends (limits, windows, health), budgets and the audit state of a running plane."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from cloud.home import CloudHome
    from protos import router_pb2, router_pb2_grpc

    if home_dir is None:
        raise click.UsageError("--home is required (or set EDGEFLUX_CLOUD_HOME)")
    home = CloudHome.at(home_dir)
    crt, key = home.operator_paths(operator)
    if not crt.exists():
        raise click.ClickException(
            f"no operator certificate {crt}; issue one with `edgeflux cloud operator add`"
        )
    address = address or f"localhost:{home.config().grpc_port}"
    creds = grpc.ssl_channel_credentials(
        root_certificates=home.ca_pem(),
        private_key=key.read_bytes(),
        certificate_chain=crt.read_bytes(),
    )
    with grpc.secure_channel(address, creds) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)  # type: ignore[no-untyped-call]
        try:
            resp = stub.RouterStats(router_pb2.RouterStatsRequest(), timeout=10)
        except grpc.RpcError as exc:
            raise click.ClickException(f"RouterStats on {address} failed: {exc}") from exc
    data: dict[str, Any] = MessageToDict(resp, preserving_proto_field_name=True)
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo(f"{'backend':<16}{'tier':>5}{'limit':>8}{'in-flight':>10}{'healthy':>9}")
    for b in resp.backends:
        click.echo(
            f"{b.name:<16}{b.tier:>5}{b.concurrency_limit:>8.1f}{b.in_flight:>10}"
            f"{'yes' if b.healthy else 'no':>9}"
        )
    for bud in resp.budgets:
        click.echo(
            f"budget {bud.scope}: used {bud.used_usd:.4f} + reserved {bud.reserved_usd:.4f} "
            f"of {bud.limit_usd:.4f} USD"
        )
    click.echo(f"audit: {resp.audit_records} records, head {resp.audit_tree_head[:16]}")
