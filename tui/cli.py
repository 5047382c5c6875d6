"""`edgeflux tui`: the operator console's composition root.

Usage::

    edgeflux tui --cloud localhost:7443 \\
        --cert ~/.edgeflux/alice.crt --key ~/.edgeflux/alice.key --ca ~/.edgeflux/fleet-ca.crt \\
        --attestation-keys ~/.edgeflux/attestation-keys/

Without --cert/--key/--ca it connects in plaintext (loopback development planes only).
A viewer certificate (or --read-only) hides every mutating action.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["tui"]

_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(name="tui")
@click.option(
    "--cloud",
    "target",
    required=True,
    envvar="EDGEFLUX_CLOUD",
    metavar="HOST:PORT[,HOST:PORT...]",
    help="Control-plane admin gRPC address; several plane replicas: a comma-separated list.",
)
@click.option("--cert", type=_PATH, envvar="EDGEFLUX_CERT", help="Operator certificate (PEM).")
@click.option("--key", type=_PATH, envvar="EDGEFLUX_KEY", help="Operator private key (PEM).")
@click.option("--ca", type=_PATH, envvar="EDGEFLUX_CA", help="Fleet CA certificate (PEM).")
@click.option(
    "--server-name", default="", help="Name to expect in the plane's certificate (if not HOST)."
)
@click.option("--read-only", is_flag=True, help="Offer no mutating action (no pushes).")
@click.option(
    "--attestation-keys",
    type=click.Path(exists=True, path_type=Path),
    envvar="EDGEFLUX_ATTESTATION_KEYS",
    help="Trusted Ed25519 attestation public key(s): a PEM/JSON file or a directory of them.",
)
@click.option(
    "--theme",
    type=click.Choice(["textual-dark", "textual-light", "edgeflux-high-contrast"]),
    default="textual-dark",
    show_default=True,
)
@click.option(
    "--export-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where `e`/`E` write the fleet view as CSV/JSON.",
)
def tui(
    target: str,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    server_name: str,
    read_only: bool,
    attestation_keys: Path | None,
    theme: str,
    export_dir: Path,
) -> None:
    """The operator console: live fleet, devices, bundles and pushes, attestations, routing,
    rollouts."""
    from protos.plane_target import TargetError, parse_addresses
    from tui.client import AdminClient, AdminError, TlsFiles, certificate_role, speaks_tls
    from tui.verify import TrustedKeyError, load_trusted_keys

    try:
        host, port = parse_addresses(target)[0]
    except TargetError as exc:
        detail = f" ({exc})" if "," in target else ""  # which replica's entry is bad
        raise click.ClickException(f"--cloud must be HOST:PORT, got {target!r}{detail}") from exc
    given = [n for n, v in (("--cert", cert), ("--key", key), ("--ca", ca)) if v is not None]
    if given and len(given) != 3:
        missing = sorted({"--cert", "--key", "--ca"} - set(given))
        raise click.ClickException(
            f"mTLS needs --cert, --key and --ca together; missing {', '.join(missing)}"
        )
    if not given and speaks_tls(host, port):
        raise click.ClickException(
            f"the control plane at {target} requires mTLS: give --cert, --key and --ca "
            "(an operator's files from `edgeflux cloud init`: <home>/pki/operators/admin.crt, "
            "admin.key and <home>/pki/ca.crt)"
        )
    if not export_dir.is_dir():
        raise click.ClickException(f"--export-dir {export_dir} is not a directory")
    role = None
    tls = None
    try:
        if cert is not None and key is not None and ca is not None:
            tls = TlsFiles(cert, key, ca, server_name)
            role = certificate_role(cert.read_bytes())
        keys = load_trusted_keys(attestation_keys)
        client = AdminClient(target, tls)
    except (AdminError, TrustedKeyError) as exc:
        raise click.ClickException(str(exc)) from exc

    from tui.app import EdgeFluxApp

    app = EdgeFluxApp(
        client,
        read_only=read_only,
        role=role,
        trusted_keys=keys,
        export_dir=export_dir,
        theme=theme,
    )
    try:
        app.run()
    finally:
        client.close()
