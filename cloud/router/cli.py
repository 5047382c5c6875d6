"""`edgeflux cloud router ...`: check the audit log, look at routing from outside.

Usage::

    edgeflux cloud router audit verify --home ./plane            # state/router-audit.jsonl
    edgeflux cloud router audit verify ./audit.jsonl --key ./router-audit.pub --json
    edgeflux cloud router audit verify --home ./plane --witness ./heads.jsonl --size 1200
    edgeflux cloud router audit heads --home ./plane --out ./heads.jsonl   # export heads
    edgeflux cloud router audit repair --home ./plane   # cut a torn last line, audited
    edgeflux cloud router stats --home ./plane --json            # RouterStats over mTLS
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from cloud._cli_common import plane_address

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


def _public_key(key_path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(key_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the public key {key_path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise click.ClickException(f"{key_path} is not an Ed25519 public key")
    return key


def _store_heads(home_dir: Path, log_path: Path, key: Any) -> list[dict[str, Any]]:
    """The heads the plane at `home_dir` recorded in its store for this log."""

    from cloud.home import CloudHome
    from cloud.router.audit import audit_log_id
    from cloud.router.errors import AuditError
    from cloud.store.errors import StoreError
    from cloud.store.router_audit import HeadStore

    home = CloudHome.at(home_dir)
    try:
        store = HeadStore.open(home.database_url(), migrate=False)
        try:
            return store.heads(audit_log_id(key, log_path))
        finally:
            store.engine.dispose()
    except (AuditError, StoreError) as exc:
        raise click.ClickException(
            f"cannot read the tree heads kept in the store of {home_dir}: {exc} "
            "(use --no-store to check the file alone)"
        ) from exc


def _read_witness(path: Path) -> list[dict[str, Any]]:
    heads = []
    try:
        raw = path.read_bytes().splitlines()
    except OSError as exc:
        raise click.ClickException(f"cannot read the witness file {path}: {exc}") from exc
    for i, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise click.ClickException(f"{path}:{i}: not JSON") from exc
        if not isinstance(obj, dict) or obj.get("kind") != "tree_head":
            raise click.ClickException(f"{path}:{i}: not a tree head")
        heads.append(obj)
    return heads


@audit_group.command("verify")
@click.argument("log_path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM) that signs the tree heads.",
)
@home_option
@click.option(
    "--witness",
    "witness_paths",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of tree heads exported earlier (`audit heads --out`); repeatable.",
)
@click.option("--size", type=click.IntRange(min=0), help="The log has at least this many records.")
@click.option("--head", "root", help="Root (hex) of a known tree head (of --size records).")
@click.option("--no-store", is_flag=True, help="With --home: ignore the heads in the store.")
@click.option(
    "--allow-unsigned-tail",
    is_flag=True,
    help="Accept records after the last head (a plane that is still running).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(
    log_path: Path | None,
    key_path: Path | None,
    home_dir: Path | None,
    witness_paths: tuple[Path, ...],
    size: int | None,
    root: str | None,
    no_store: bool,
    allow_unsigned_tail: bool,
    as_json: bool,
) -> None:
    """Check the hash chain and every signed tree head of an audit log, end to end, and
    against the heads kept outside it (the plane's store, witness files, a known head)."""
    from cloud.router.audit import verify_log
    from cloud.router.errors import AuditVerificationError

    if home_dir is not None:
        log_path = log_path or home_dir / "state" / "router-audit.jsonl"
        key_path = key_path or home_dir / "keys" / "router-audit.pub"
    if log_path is None or key_path is None:
        raise click.UsageError("give LOG_PATH and --key, or --home of a control plane")
    key = _public_key(key_path)
    try:
        lines = log_path.read_bytes().splitlines()
    except OSError as exc:
        raise click.ClickException(f"cannot read the audit log {log_path}: {exc}") from exc
    witness: list[dict[str, Any]] = []
    for w in witness_paths:
        witness += _read_witness(w)
    if home_dir is not None and not no_store:
        witness += _store_heads(home_dir, log_path, key)
    try:
        report = verify_log(
            lines,
            key,
            str(log_path),
            witness=witness,
            size=size,
            root=root,
            strict=not allow_unsigned_tail,
        )
    except AuditVerificationError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "log": str(log_path), "error": str(exc)}))
        raise click.ClickException(f"audit log FAILED verification: {exc}") from exc
    out = {
        "ok": True,
        "log": str(log_path),
        "records": report.records,
        "tree_heads": report.tree_heads,
        "witness_heads": len(witness),
        "unsigned_tail": report.unsigned_tail,
        "root": report.root,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"OK: {report.records} records, {report.tree_heads} signed tree heads "
            f"({len(witness)} witnessed), {report.unsigned_tail} records after the last "
            f"head; root {report.root[:16]}…"
        )


@audit_group.command("heads")
@home_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the heads not yet in this witness file (default: print them).",
)
def heads_cmd(home_dir: Path | None, out_path: Path | None) -> None:
    """Export the signed tree heads the plane keeps in its store, for a witness outside it."""
    from cloud.router.audit import canonical_json

    if home_dir is None:
        raise click.UsageError("--home is required (or set EDGEFLUX_CLOUD_HOME)")
    log_path = home_dir / "state" / "router-audit.jsonl"
    key = _public_key(home_dir / "keys" / "router-audit.pub")
    heads = _store_heads(home_dir, log_path, key)
    if out_path is None:
        for h in heads:
            click.echo(canonical_json(h).decode())
        return
    have = {int(h["size"]) for h in _read_witness(out_path)} if out_path.exists() else set()
    new = [h for h in heads if int(h["size"]) not in have]
    with out_path.open("ab") as fh:
        fh.write(b"".join(canonical_json(h) + b"\n" for h in new))
        fh.flush()
        os.fsync(fh.fileno())
    click.echo(f"{len(new)} new tree heads appended to {out_path} ({len(have) + len(new)} in all)")


@audit_group.command("repair")
@home_option
def repair_cmd(home_dir: Path | None) -> None:
    """Cut a torn last line (power loss) from a stopped plane's audit log, after
    recording it in ``router-audit.jsonl.torn`` and in the log under a new signed head."""
    from cloud.home import CloudHome
    from cloud.router.audit import audit_log_id
    from cloud.router.audit_repair import repair_log
    from cloud.router.errors import AuditError
    from cloud.router.service import load_audit_key
    from cloud.store.router_audit import HeadStore

    if home_dir is None:
        raise click.UsageError("--home is required (or set EDGEFLUX_CLOUD_HOME)")
    home = CloudHome.at(home_dir)
    log_path = home.state / "router-audit.jsonl"
    if not (home.keys / "router-audit.key").exists():
        raise click.ClickException(f"no audit signing key {home.keys / 'router-audit.key'}")
    key = load_audit_key(home.keys)
    heads = HeadStore.open(home.database_url())
    log_id = audit_log_id(key.public_key(), log_path)
    try:
        rep = repair_log(log_path, key, on_head=lambda h: heads.add(log_id, h))
    except AuditError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        heads.engine.dispose()
    if rep is None:
        click.echo(f"{log_path}: no torn line; nothing to repair")
    elif rep.kept:
        click.echo(f"{log_path}:{rep.line}: a whole last line lacked its newline; added it")
    else:
        click.echo(
            f"{log_path}:{rep.line}: cut a torn line of {rep.cut_bytes} bytes "
            f"(sha256 {rep.sha256[:16]}…), kept in {log_path.name}.torn; repair audited"
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
    plane = plane_address(address)  # one address or several replicas
    with grpc.secure_channel(plane.target, creds, options=plane.options) as ch:
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
