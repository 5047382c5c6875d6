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
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from distill.errors import DistillError

__all__ = ["EXIT_NOT_ATTESTED", "attest"]

EXIT_NOT_ATTESTED = 3
"""`attest run` ran to the end and signed a `not_attested` verdict (errors exit 1)."""

_home_option = click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=None,
    help="Control-plane home (env EDGEFLUX_CLOUD_HOME): its trust store, keys, database.",
)


def _home(home_dir: Path) -> Any:
    from cloud.home import CloudHome, HomeError

    home = CloudHome.at(home_dir)
    try:
        home.check()
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    return home


def _trusted(trust_dir: Path) -> dict[str, Any]:
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


def _connection(
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
        home = _home(home_dir)
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


@click.group()
def attest() -> None:
    """Parity attestations: run, get, verify, show."""


# ------------------------------------------------------------------------- run
@attest.command("run")
@click.argument(
    "bundle", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--campaign",
    "campaign_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Campaign definition (TOML: [campaign] and [[task]] tables).",
)
@_home_option
@click.option("--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--key", "key_file", type=click.Path(dir_okay=False, path_type=Path), help="Ed25519 key."
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Campaign state (resumable); default ./campaigns/<name>-<policy digest>.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Copy of the DSSE.")
@click.option("--workers", type=click.IntRange(1, 64), help="Override [campaign] workers.")
@click.option(
    "--remote",
    metavar="NAME@VERSION",
    help="Run on the control plane (RunParityCampaign) against this published bundle.",
)
@click.option("--server", help="host:port for --remote (default: from the home).")
@click.option("--operator", default="admin", show_default=True, help="Operator for --remote.")
@click.option(
    "--against",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Another signed bundle (e.g. the version in the field) as the reference arm.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run_cmd(
    bundle: Path | None,
    campaign_file: Path,
    home_dir: Path | None,
    trust_dir: Path | None,
    key_file: Path | None,
    workdir: Path | None,
    out: Path | None,
    workers: int | None,
    remote: str | None,
    server: str | None,
    operator: str,
    against: Path | None,
    as_json: bool,
) -> None:
    """Run a parity campaign on BUNDLE (or a published bundle with --remote) and sign it."""
    if remote is not None:
        if against is not None:
            raise click.UsageError("--against runs locally; it does not combine with --remote")
        if bundle is not None:
            raise click.UsageError("give either BUNDLE or --remote NAME@VERSION, not both")
        _run_remote(remote, campaign_file, home_dir, server, operator, out, as_json)
        return
    if bundle is None:
        raise click.UsageError("give BUNDLE (a signed bundle directory) or --remote NAME@VERSION")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cloud.attest import campaign, statement

    home = _home(home_dir) if home_dir else None
    if home is not None:
        trust_dir = trust_dir or home.trust
        key_file = key_file or home.key_path("attestation", private=True)
    if trust_dir is None or key_file is None:
        raise click.UsageError("give --home, or both --trust and --key")
    try:
        spec = campaign.load_campaign(campaign_file)
        if workers:
            spec = spec.model_copy(update={"workers": workers})
        key = statement.load_key(key_file)
    except (campaign.CampaignError, statement.StatementError) as exc:
        raise click.ClickException(str(exc)) from exc
    _check_tasks(spec, campaign_file)
    if workdir is None:
        import hashlib

        from runtime.bundle import POLICY_NAME

        policy = bundle / POLICY_NAME
        if not policy.is_file():
            raise click.ClickException(f"{bundle} is not a bundle: it has no {POLICY_NAME}")
        digest = hashlib.sha256(policy.read_bytes()).hexdigest()
        # The campaign's own digest is part of the name: an edited campaign (a fixed
        # task, another margin) starts afresh instead of colliding with the old state,
        # while rerunning the same command resumes.
        workdir = Path("campaigns") / f"{spec.name}-{digest[:16]}-{spec.digest()[:8]}"
        if against is not None:
            other = against / POLICY_NAME
            if not other.is_file():
                raise click.ClickException(f"{against} is not a bundle: it has no {POLICY_NAME}")
            vs = hashlib.sha256(other.read_bytes()).hexdigest()[:8]
            workdir = workdir.with_name(f"{workdir.name}-vs-{vs}")

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_err_console(), transient=as_json) as bar:
        task_id = bar.add_task("verifying bundle", total=None)

        def progress(done: int, total: int, stage: str) -> None:
            bar.update(task_id, completed=done, total=total, description=stage)

        try:
            result = campaign.run_campaign(
                bundle,
                spec,
                workdir=workdir,
                trust_dir=trust_dir,
                key=key,
                progress=progress,
                against=against,
            )
        except campaign.CampaignError as exc:
            raise click.ClickException(str(exc)) from exc
        except DistillError as exc:  # raised in a worker: an environment it cannot build
            raise click.ClickException(f"{campaign_file}: {exc}") from exc
        except KeyboardInterrupt:
            click.echo(f"stopped; rerun the same command to resume from {workdir}", err=True)
            raise
    if out is not None:
        shutil.copyfile(result.attestation_path, out)
    plot = _plot_beside(result.statement, out or result.attestation_path)
    stored = False
    if home is not None:
        _store_attestation(home, result.attestation_path.read_bytes())
        stored = True
    summary = {
        "verdict": result.verdict,
        "attestation": str(out or result.attestation_path),
        "policy_sha256": result.bundle.policy_sha256,
        "root_digest": result.bundle.root_digest,
        "stored_in_control_plane": stored,
        "plot": str(plot) if plot else None,
        "tasks": [
            {k: t.get(k) for k in ("name", "n_pairs", "mean_diff", "p_tost", "p_holm", "outcome")}
            for t in result.statement["predicate"]["tasks"]
        ],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        from cloud.attest.report import render_text

        click.echo(render_text(result.statement, verified_by=key.key_id))
        click.echo(f"attestation: {summary['attestation']}" + (" (stored)" if stored else ""))
        if plot is not None:
            click.echo(f"plot: {plot}")
    _exit_for(result.verdict)


def _exit_for(verdict: str) -> None:
    if verdict != "attested":
        sys.exit(EXIT_NOT_ATTESTED)


def plot_path(attestation: Path) -> Path:
    """Where `attest run` puts the plot of an attestation file: beside it, `.png`."""
    return attestation.with_suffix(".png")


def _plot_beside(stmt: dict[str, Any], attestation: Path) -> Path | None:
    from cloud.attest.report import plot_differences

    try:
        return plot_differences(stmt, plot_path(attestation))
    except (ValueError, OSError) as exc:
        click.echo(f"no plot: {exc}", err=True)
        return None


def _check_tasks(spec: Any, campaign_file: Path) -> None:
    """Build every task's environment once, before anything runs or is written: an
    unknown env_id, a variant the environment lacks or a value out of range is named
    here, in one line, instead of failing inside a worker."""
    try:
        from distill.envs import make_env
    except ImportError as exc:
        raise click.ClickException(
            f"a campaign needs gymnasium ({exc.name or exc}); pip install 'edgeflux[sim]'"
        ) from exc
    for i, task in enumerate(spec.tasks):
        try:
            make_env(task.env_id, task.variant).close()
        except DistillError as exc:
            raise click.ClickException(f"{campaign_file}: task {i} ({task.name!r}): {exc}") from exc
    teacher = spec.teacher
    if teacher not in ("oracle-mppi", "bundle"):
        import importlib

        module, _, attr = teacher.partition(":")
        try:
            ok = bool(attr) and callable(getattr(importlib.import_module(module), attr, None))
        except ImportError:
            ok = False
        if not ok:
            raise click.ClickException(
                f"{campaign_file}: teacher {teacher!r} is neither 'bundle', 'oracle-mppi' nor an "
                "importable 'module:factory'"
            )


def _run_remote(
    remote: str,
    campaign_file: Path,
    home_dir: Path | None,
    server: str | None,
    operator: str,
    out: Path | None,
    as_json: bool,
) -> None:
    import grpc
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from protos import attestation_pb2, attestation_pb2_grpc, common_pb2

    name, sep, version = remote.partition("@")
    if not (sep and name and version):
        raise click.UsageError(f"--remote takes NAME@VERSION, got {remote!r}")
    address, creds = _connection(home_dir, server, operator, None, None, None)
    request = attestation_pb2.RunParityCampaignRequest(
        bundle=common_pb2.BundleRef(name=name, version=version),
        campaign_toml=campaign_file.read_text(),
    )
    final = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with (
        grpc.secure_channel(address, creds) as channel,
        Progress(*columns, console=_err_console(), transient=as_json) as bar,
    ):
        task_id = bar.add_task(f"campaign on {address}", total=None)
        try:
            stub = attestation_pb2_grpc.AttestationServiceStub(channel)  # type: ignore[no-untyped-call]
            for update in stub.RunParityCampaign(request):
                if update.HasField("result"):
                    final = update.result
                else:
                    bar.update(
                        task_id, completed=update.done, total=update.total, description=update.stage
                    )
        except grpc.RpcError as exc:
            raise click.ClickException(f"{address}: {exc.code().name}: {exc.details()}") from exc
    if final is None:
        raise click.ClickException(f"{address}: the campaign stream ended without a result")
    raw = bytes(final.envelope.dsse_json)
    if out is not None:
        from runtime.atomicio import atomic_write_bytes

        atomic_write_bytes(out, raw)
    plot = _plot_beside(_decode(raw, address), out) if out is not None else None
    summary = {
        "verdict": final.verdict,
        "policy_sha256": final.subject_sha256,
        "root_digest": final.bundle.oms_root_digest,
        "stored_in_control_plane": True,
        "attestation": str(out) if out else None,
        "plot": str(plot) if plot else None,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{final.verdict}: {name} {version} (policy {final.subject_sha256[:16]}…)")
        if plot is not None:
            click.echo(f"plot: {plot}")
    _exit_for(final.verdict)


def _err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _store_attestation(home: Any, raw: bytes) -> None:
    from cloud.attest.service import record_from_envelope
    from cloud.store import Store, StoreError
    from cloud.store.attestations import AttestationStore

    try:
        store = Store.open(home.database_url(home.config()))
    except StoreError as exc:
        raise click.ClickException(f"could not store the attestation: {exc}") from exc
    try:
        rec = record_from_envelope(raw, _trusted(home.trust), created_by="cli")
        AttestationStore(store.engine).put(rec)
    finally:
        store.close()


# ------------------------------------------------------------------------- get
@attest.command("get")
@click.argument("digest", metavar="DIGEST|BUNDLE")
@_home_option
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

    server, creds = _connection(home_dir, server, operator, cert, key_file, ca)
    with grpc.secure_channel(server, creds) as channel:
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
                _trusted(_home(home_dir).trust),
                require_attested=False,
                check_time=False,
            )
        except statement.StatementError as exc:
            raise click.ClickException(f"refused ({exc.reason}): {exc}") from exc
        return report.render_text(checked.statement, verified_by=checked.key_id)
    return report.render_text(_decode(raw, "the fetched attestation"))


def _decode(raw: bytes, what: str) -> dict[str, Any]:
    import base64
    import binascii

    try:
        stmt: dict[str, Any] = json.loads(base64.b64decode(json.loads(raw)["payload"]))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise click.ClickException(f"{what}: not a DSSE envelope ({exc})") from exc
    return stmt


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
            _trusted(trust_dir),
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
                raw, _trusted(trust_dir), require_attested=False, check_time=False
            )
        except statement.StatementError as exc:
            raise click.ClickException(f"refused ({exc.reason}): {exc}") from exc
        stmt, verified_by = checked.statement, checked.key_id
    else:
        stmt = _decode(raw, str(attestation))
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
