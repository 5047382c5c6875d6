"""`edgeflux bundle ...`: create, sign, verify, inspect and pack model bundles.

Usage::

    edgeflux bundle keygen --private keys/signing.pem --public keys/signing.pub
    edgeflux bundle create --onnx policy.onnx --name pendulum --version 1.0.0 \\
        --sequence 1 --spec pendulum.toml --out out/pendulum-1.0.0
    edgeflux bundle sign out/pendulum-1.0.0 --key keys/signing.pem
    edgeflux bundle trust add keys/signing.pub --trust-dir ./trust
    edgeflux bundle verify out/pendulum-1.0.0 --trust-dir ./trust
    edgeflux bundle pack out/pendulum-1.0.0 --out pendulum-1.0.0.efb
    edgeflux bundle inspect pendulum-1.0.0.efb --json

A spec TOML holds any manifest table (`[io]`, `[control]`, `[compatibility]`,
`[provenance]`); the I/O tensors default to the graph's, flags win over the file.
User mistakes end with one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
from rich.table import Table

from edgeflux._bundle_common import (
    err_console,
    hashing_progress,
    out_console,
    read_passphrase,
    trust_options,
    trust_store,
    user_errors,
)
from edgeflux._bundle_create import create
from edgeflux._bundle_inspect import inspect, verify
from runtime.bundle import (
    generate_signing_key,
    pack_bundle,
    sign_bundle,
    unpack_bundle,
)
from runtime.bundle.archive import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_TOTAL_BYTES
from runtime.trust import ROLES

__all__ = ["bundle"]


@click.group(name="bundle")
def bundle() -> None:
    """Create, sign, verify, inspect and pack model bundles.

    \b
    edgeflux bundle keygen --private k.pem --public k.pub
    edgeflux bundle create --onnx policy.onnx --name pendulum --version 1.0.0 \\
        --spec pendulum.toml --out pendulum-1.0.0
    edgeflux bundle sign pendulum-1.0.0 --key k.pem
    edgeflux bundle trust add k.pub --trust-dir ./trust
    edgeflux bundle verify pendulum-1.0.0 --trust-dir ./trust
    edgeflux bundle pack pendulum-1.0.0 --out pendulum-1.0.0.efb
    """


# --------------------------------------------------------------------- keys / sign


@bundle.command()
@click.option("--private", "private_path", required=True, type=click.Path(path_type=Path))
@click.option("--public", "public_path", required=True, type=click.Path(path_type=Path))
@click.option("--encrypt", is_flag=True, help="Ask for a passphrase to encrypt the private key.")
@click.option("--passphrase-env", help="Read the passphrase from this environment variable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(
    private_path: Path,
    public_path: Path,
    encrypt: bool,
    passphrase_env: str | None,
    as_json: bool,
) -> None:
    """Generate an ECDSA P-256 signing key pair (private key mode 0600)."""
    with user_errors():
        passphrase = read_passphrase(passphrase_env, encrypt, confirm=True)
        kid = generate_signing_key(private_path, public_path, passphrase)
    if as_json:
        click.echo(
            json.dumps({"key_id": kid, "private": str(private_path), "public": str(public_path)})
        )
    else:
        click.echo(f"key id {kid}")
        err_console.print(f"private key {private_path} (0600), public key {public_path}")


@bundle.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--passphrase-env", help="Read the key's passphrase from this environment variable.")
@click.option("--ask-passphrase", is_flag=True, help="Prompt for the key's passphrase.")
def sign(
    bundle_dir: Path, key_path: Path, passphrase_env: str | None, ask_passphrase: bool
) -> None:
    """Sign every file of a bundle into model.sig (OMS v1.0, key mode)."""
    with user_errors():
        passphrase = read_passphrase(passphrase_env, ask_passphrase)
        with hashing_progress(bundle_dir, "signing") as advance:
            out = sign_bundle(bundle_dir, key_path, passphrase, progress=advance)
    err_console.print(f"signed: {out}")


# --------------------------------------------------------------------- pack / unpack


@bundle.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_efb", required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pack(bundle_dir: Path, out_efb: Path, as_json: bool) -> None:
    """Pack a signed bundle into one .efb (deterministic tar)."""
    with user_errors():
        out = pack_bundle(bundle_dir, out_efb)
    h = hashlib.sha256()
    with out.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    info = {"efb": str(out), "length": out.stat().st_size, "sha256": h.hexdigest()}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{out} {info['length']} bytes sha256 {info['sha256']}")


@bundle.command()
@click.argument("efb", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--max-members", type=int, default=DEFAULT_MAX_MEMBERS, show_default=True)
@click.option("--max-bytes", type=int, default=DEFAULT_MAX_TOTAL_BYTES, show_default=True)
def unpack(efb: Path, out_dir: Path, max_members: int, max_bytes: int) -> None:
    """Unpack an .efb into a new directory (verify it afterwards)."""
    with user_errors():
        out = unpack_bundle(efb, out_dir, max_members=max_members, max_total_bytes=max_bytes)
    err_console.print(f"unpacked into {out}; next: edgeflux bundle verify {out}")


# --------------------------------------------------------------------- trust


@bundle.group(name="trust")
def trust_group() -> None:
    """Manage the trusted public keys (roles: models, attestation)."""


_role = click.option("--role", type=click.Choice(ROLES), default="models", show_default=True)


@trust_group.command("list")
@trust_options
@click.option("--role", type=click.Choice(ROLES), help="Only this role [default: all].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def trust_list(root: Path, trust_dir: Path | None, role: str | None, as_json: bool) -> None:
    """List trusted key ids."""
    with user_errors():
        store = trust_store(root, trust_dir)
        roles = [role] if role else list(ROLES)
        rows = [(r, kid) for r in roles for kid in store.list(r)]
    if as_json:
        click.echo(json.dumps([{"role": r, "key_id": k} for r, k in rows]))
        return
    table = Table(title=f"trusted keys in {store.directory}")
    table.add_column("role")
    table.add_column("key id")
    for r, k in rows:
        table.add_row(r, k)
    out_console().print(table)


@trust_group.command("add")
@click.argument("public_key", type=click.Path(dir_okay=False, path_type=Path))
@trust_options
@_role
def trust_add(public_key: Path, root: Path, trust_dir: Path | None, role: str) -> None:
    """Trust a public key (PEM) for a role; prints its key id."""
    with user_errors():
        try:
            pem = public_key.read_bytes()
        except OSError as exc:
            raise click.ClickException(f"{public_key}: cannot read ({exc.strerror})") from exc
        kid = trust_store(root, trust_dir).add(role, pem)
    click.echo(kid)


@trust_group.command("remove")
@click.argument("key_id")
@trust_options
@_role
def trust_remove(key_id: str, root: Path, trust_dir: Path | None, role: str) -> None:
    """Stop trusting a key (full id, or a unique prefix of 8+ chars)."""
    with user_errors():
        store = trust_store(root, trust_dir)
        kid = store.resolve(role, key_id)
        store.remove(role, kid)
    err_console.print(f"removed {kid} from role {role}")


bundle.add_command(create)
bundle.add_command(verify)
bundle.add_command(inspect)
