"""`edgeflux attest ...`: run, fetch, verify and explain parity attestations.

Usage::

    # run a campaign on a signed bundle; sign with the plane's attestation key and
    # store the result so the control plane serves it to robots
    edgeflux attest run ./bundles/pendulum-1.0.0 --campaign campaign.toml --home ./plane

    # or with explicit keys, no control plane
    edgeflux attest run ./bundles/pendulum-1.0.0 --campaign campaign.toml \\
        --trust ./trust --key ./keys/attestation.key --out pendulum.att.json

    # or on the control plane itself, against a published bundle (RunParityCampaign)
    edgeflux attest run --remote pendulum@1.0.0 --campaign campaign.toml --home ./plane

    edgeflux attest get <policy sha256> --home ./plane --out pendulum.att.json
    edgeflux attest get ./bundles/pendulum-1.0.0 --home ./plane      # its policy's attestation
    edgeflux attest verify pendulum.att.json --trust ./trust --bundle ./bundles/pendulum-1.0.0
    edgeflux attest show pendulum.att.json --trust ./trust --png parity.png

`verify` is offline: it needs only the attestation, the trusted attestation keys
(``<trust>/attestation/*.pem``) and either the bundle or its two digests. It exits 1
with the refusal reason when the attestation does not hold.

Exit codes of `run`: 0 attested, 3 not attested (the campaign ran and the signed
verdict is ``not_attested``), 1 an error (nothing attested), 2 a usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cloud._cli_common import plane_address
from cloud.attest._cli_common import (
    EXIT_NOT_ATTESTED,
    connection,
    decode,
    home_option,
    load_home,
    plot_path,
    trusted_keys,
)
from cloud.attest.cli_run import run_cmd

__all__ = ["EXIT_NOT_ATTESTED", "attest"]


@click.group()
def attest() -> None:
    """Parity attestations: run, get, verify, show."""


# ------------------------------------------------------------------------- get
@attest.command("get")
@click.argument("digest", metavar="DIGEST|BUNDLE")
@home_option
@click.option("--server", help="host:port of the control plane (default: from the home).")
@click.option("--operator", default="admin", show_default=True, help="Operator identity.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the DSSE.")
@click.option(
    "--raw", "raw_dsse", is_flag=True, help="Print the DSSE envelope itself (base64 payload)."
)
@click.option("--json", "as_json", is_flag=True)
def get_cmd(
    digest: str,
    home_dir: Path | None,
    server: str | None,
    operator: str,
    cert: Path | None,
    key_file: Path | None,
    ca: Path | None,
    out: Path | None,
    raw_dsse: bool,
    as_json: bool,
) -> None:
    """Fetch the attestation for a policy.onnx DIGEST (or a bundle directory's policy)
    over gRPC (mTLS) and show it."""
    import grpc

    from protos import attestation_pb2, attestation_pb2_grpc

    digest = _policy_digest(digest)

    server, creds = connection(home_dir, server, operator, cert, key_file, ca)
    plane = plane_address(server)  # one address or several replicas
    with grpc.secure_channel(plane.target, creds, options=plane.options) as channel:
        stub = attestation_pb2_grpc.AttestationServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply = stub.GetAttestation(
                attestation_pb2.GetAttestationRequest(subject_sha256=digest), timeout=10
            )
        except grpc.RpcError as exc:
            raise click.ClickException(f"{server}: {exc.code().name}: {exc.details()}") from exc
    raw = bytes(reply.envelope.dsse_json)
    if out is not None:
        from runtime.atomicio import atomic_write_bytes

        atomic_write_bytes(out, raw)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "subject_sha256": reply.subject_sha256,
                    "verdict": reply.verdict,
                    "bundle": reply.bundle.name,
                    "version": reply.bundle.version,
                    "issued_at": reply.issued_at.ToJsonString(),
                    "expires_at": reply.expires_at.ToJsonString(),
                    "out": str(out) if out else None,
                }
            )
        )
    elif raw_dsse:
        sys.stdout.buffer.write(raw + b"\n")
    else:
        click.echo(_readable(raw, home_dir))
        if out is not None:
            click.echo(f"attestation: {out}")


def _policy_digest(given: str) -> str:
    """A sha256 hex digest as given, or the digest of a bundle directory's policy.onnx."""
    import hashlib
    import re

    from runtime.bundle import POLICY_NAME

    path = Path(given)
    if path.is_dir():
        policy = path / POLICY_NAME
        if not policy.is_file():
            raise click.ClickException(f"{path} is not a bundle: it has no {POLICY_NAME}")
        return hashlib.sha256(policy.read_bytes()).hexdigest()
    if not re.fullmatch(r"[0-9a-f]{64}", given):
        raise click.UsageError(
            f"{given!r} is neither a policy sha256 (64 hex digits) nor a bundle directory"
        )
    return given


def _readable(raw: bytes, home_dir: Path | None) -> str:
    """The report of a fetched envelope; its signature checked against the home's trust
    store when there is one."""
    from cloud.attest import report, statement

    if home_dir is not None:
        try:
            checked = statement.verify_envelope(
                raw,
                trusted_keys(load_home(home_dir).trust),
                require_attested=False,
                check_time=False,
            )
        except statement.StatementError as exc:
            raise click.ClickException(f"refused ({exc.reason}): {exc}") from exc
        return report.render_text(checked.statement, verified_by=checked.key_id)
    return report.render_text(decode(raw, "the fetched attestation"))


# ------------------------------------------------------------------------- verify
@attest.command("verify")
@click.argument("attestation", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    "trust_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Trust store: attestation/*.pem (and models/*.pem with --bundle).",
)
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--policy-sha256", help="Expected policy.onnx digest (instead of --bundle).")
@click.option("--root-digest", help="Expected OMS root digest (instead of --bundle).")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(
    attestation: Path,
    trust_dir: Path,
    bundle: Path | None,
    policy_sha256: str | None,
    root_digest: str | None,
    as_json: bool,
) -> None:
    """Verify ATTESTATION offline against trusted keys and a bundle (or its digests)."""
    from cloud.attest import statement

    if bundle is not None:
        from runtime.bundle import BundleError, verify_bundle
        from runtime.trust import TrustStore

        try:
            vb = verify_bundle(bundle, TrustStore(trust_dir))
        except BundleError as exc:
            raise click.ClickException(f"the bundle does not verify: {exc}") from exc
        policy_sha256, root_digest = vb.policy_sha256, vb.root_digest
    if policy_sha256 is None or root_digest is None:
        raise click.UsageError("give --bundle, or both --policy-sha256 and --root-digest")
    try:
        checked = statement.verify_envelope(
            attestation.read_bytes(),
            trusted_keys(trust_dir),
            policy_sha256=policy_sha256,
            root_digest=root_digest,
        )
    except statement.StatementError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "reason": exc.reason, "message": str(exc)}))
            sys.exit(1)
        raise click.ClickException(f"refused ({exc.reason}): {exc}") from exc
    info = {
        "valid": True,
        "verdict": checked.verdict,
        "key_id": checked.key_id,
        "bundle": checked.bundle_name,
        "policy_sha256": checked.policy_sha256,
        "root_digest": checked.root_digest,
        "expires_at": checked.expires_at.isoformat(),
    }
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(
            f"valid: {checked.verdict} for {checked.bundle_name} (policy {policy_sha256[:16]}…), "
            f"signed by {checked.key_id[:16]}, expires {checked.expires_at.isoformat()}"
        )


# ------------------------------------------------------------------------- show
@attest.command("show")
@click.argument("attestation", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    "trust_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Verify the signature first (recommended).",
)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write the plot.")
@click.option("--json", "as_json", is_flag=True, help="Print the statement as JSON.")
def show_cmd(attestation: Path, trust_dir: Path | None, png: Path | None, as_json: bool) -> None:
    """Print a readable report of ATTESTATION; optionally plot the paired differences."""
    from cloud.attest import report, statement

    raw = attestation.read_bytes()
    verified_by = None
    if trust_dir is not None:
        try:
            checked = statement.verify_envelope(
                raw, trusted_keys(trust_dir), require_attested=False, check_time=False
            )
        except statement.StatementError as exc:
            raise click.ClickException(f"refused ({exc.reason}): {exc}") from exc
        stmt, verified_by = checked.statement, checked.key_id
    else:
        stmt = decode(raw, str(attestation))
    if as_json:
        click.echo(json.dumps(stmt, indent=2))
    else:
        click.echo(report.render_text(stmt, verified_by=verified_by))
    if png is not None:
        try:
            report.plot_differences(stmt, png)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if not as_json:
            click.echo(f"plot: {png}")
    elif not as_json and plot_path(attestation).is_file():
        click.echo(f"plot: {plot_path(attestation)}")


attest.add_command(run_cmd)
