"""`edgeflux attest run`: a parity campaign on a signed bundle, here or on the plane."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from cloud._cli_common import plane_address
from cloud.attest._cli_common import (
    connection,
    decode,
    err_console,
    exit_for,
    home_option,
    load_home,
    plot_path,
    trusted_keys,
)
from distill.errors import DistillError

__all__ = ["run_cmd"]


@click.command("run")
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
@home_option
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
    "--executor",
    "executor_text",
    default="local",
    show_default=True,
    metavar="local|ray://HOST:PORT",
    help="Where the episodes run: this machine's process pool, or a Ray cluster's client "
    "server (same results for the same seeds).",
)
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
    executor_text: str,
    remote: str | None,
    server: str | None,
    operator: str,
    against: Path | None,
    as_json: bool,
) -> None:
    """Run a parity campaign on BUNDLE (or a published bundle with --remote) and sign it."""
    if remote is not None:
        if executor_text != "local":
            raise click.UsageError("--executor runs locally; the plane runs --remote campaigns")
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
    from cloud.attest.executors import ExecutorError, parse_executor

    home = load_home(home_dir) if home_dir else None
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
    try:
        executor = parse_executor(executor_text, spec.workers)
    except ExecutorError as exc:
        raise click.BadParameter(str(exc), param_hint="--executor") from None
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
    with Progress(*columns, console=err_console(), transient=as_json) as bar:
        task_id = bar.add_task("verifying bundle", total=None)

        where = "" if executor.label == "local" else f" on {executor.label}"

        def progress(done: int, total: int, stage: str) -> None:
            bar.update(task_id, completed=done, total=total, description=stage + where)

        try:
            with executor:
                result = campaign.run_campaign(
                    bundle,
                    spec,
                    workdir=workdir,
                    trust_dir=trust_dir,
                    key=key,
                    progress=progress,
                    against=against,
                    executor=executor,
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
    exit_for(result.verdict)


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
    address, creds = connection(home_dir, server, operator, None, None, None)
    request = attestation_pb2.RunParityCampaignRequest(
        bundle=common_pb2.BundleRef(name=name, version=version),
        campaign_toml=campaign_file.read_text(),
    )
    final = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    plane = plane_address(address)  # one address or several replicas
    with (
        grpc.secure_channel(plane.target, creds, options=plane.options) as channel,
        Progress(*columns, console=err_console(), transient=as_json) as bar,
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
    plot = _plot_beside(decode(raw, address), out) if out is not None else None
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
    exit_for(final.verdict)


def _store_attestation(home: Any, raw: bytes) -> None:
    from cloud.attest.service import record_from_envelope
    from cloud.store import Store, StoreError
    from cloud.store.attestations import AttestationStore

    try:
        store = Store.open(home.database_url(home.config()))
    except StoreError as exc:
        raise click.ClickException(f"could not store the attestation: {exc}") from exc
    try:
        rec = record_from_envelope(raw, trusted_keys(home.trust), created_by="cli")
        AttestationStore(store.engine).put(rec)
    finally:
        store.close()
