"""What the `edgeflux attest` commands share: the home option, trusted keys, the
operator's connection to the plane, exit codes and decoding an attestation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

__all__ = [
    "EXIT_NOT_ATTESTED",
    "connection",
    "decode",
    "err_console",
    "exit_for",
    "home_option",
    "load_home",
    "plot_path",
    "trusted_keys",
]

EXIT_NOT_ATTESTED = 3
"""`attest run` ran to the end and signed a `not_attested` verdict (errors exit 1)."""

home_option = click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=None,
    help="Control-plane home (env EDGEFLUX_CLOUD_HOME): its trust store, keys, database.",
)


def load_home(home_dir: Path) -> Any:
    from cloud._cli_common import load_home as load_cloud_home

    return load_cloud_home(home_dir)


def trusted_keys(trust_dir: Path) -> dict[str, Any]:
    from runtime.trust import TrustStore, TrustStoreError

    try:
        keys = TrustStore(trust_dir).public_keys("attestation")
    except TrustStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if not keys:
        raise click.ClickException(
            f"{trust_dir}/attestation/ holds no trusted attestation key; nothing can verify"
        )
    return dict(keys)


def connection(
    home_dir: Path | None,
    server: str | None,
    operator: str,
    cert: Path | None,
    key_file: Path | None,
    ca: Path | None,
) -> tuple[str, Any]:
    """Server address and mTLS credentials, from the home's operator files or flags."""
    import grpc

    if home_dir is not None:
        home = load_home(home_dir)
        crt, key = home.operator_paths(operator)
        cert, key_file, ca = cert or crt, key_file or key, ca or home.ca_cert
        if server is None:
            cfg = home.config()
            server = f"{cfg.listen_host}:{cfg.grpc_port}"
    if not (server and cert and key_file and ca):
        raise click.UsageError("give --home, or --server with --cert, --key and --ca")
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=key_file.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )
    except OSError as exc:
        raise click.ClickException(f"cannot read the operator credentials: {exc}") from exc
    return server, creds


def exit_for(verdict: str) -> None:
    if verdict != "attested":
        sys.exit(EXIT_NOT_ATTESTED)


def plot_path(attestation: Path) -> Path:
    """Where `attest run` puts the plot of an attestation file: beside it, `.png`."""
    return attestation.with_suffix(".png")


def err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def decode(raw: bytes, what: str) -> dict[str, Any]:
    import base64
    import binascii

    try:
        stmt: dict[str, Any] = json.loads(base64.b64decode(json.loads(raw)["payload"]))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise click.ClickException(f"{what}: not a DSSE envelope ({exc})") from exc
    return stmt
