"""``edgeflux rollout``: staged rollouts through the control plane's admin API (mTLS).

Usage::

    edgeflux rollout create pendulum@1.1.0 --label site=lab --waves 0.1,0.5,1 \\
        --max-failure 0.2 --home ./plane
    edgeflux rollout list --home ./plane --json
    edgeflux rollout get ro-1a2b3c4d5e6f --home ./plane
    edgeflux rollout pause|resume ro-1a2b3c4d5e6f --home ./plane
    edgeflux rollout abort ro-1a2b3c4d5e6f --rollback --home ./plane
    edgeflux rollout create pendulum@1.1.0 --label site=lab --waves 0.1,1 \
        --approval-wave 1 --home ./plane
    edgeflux rollout approve ro-1a2b3c4d5e6f --wave 1 --home ./plane

The operator certificate comes from the home (``operators/<name>.crt``, ``--operator``);
the server address from the home's config unless ``--server host:port`` is given.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cloud._cli_common import plane_address

__all__ = ["rollout"]


def _connection(home_dir: Path | None, server: str | None, operator: str) -> tuple[str, Any]:
    import grpc

    from cloud.home import CloudHome, HomeError

    if home_dir is None:
        raise click.UsageError("give --home (or set EDGEFLUX_CLOUD_HOME)")
    home = CloudHome.at(home_dir)
    try:
        home.check()
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    cert, key = home.operator_paths(operator)
    if server is None:
        cfg = home.config()
        server = f"{cfg.listen_host}:{cfg.grpc_port}"
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=home.ca_cert.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )
    except OSError as exc:
        raise click.ClickException(
            f"cannot read operator {operator!r}'s credentials ({exc}); create them with "
            f"`edgeflux cloud operator add {operator}`"
        ) from exc
    return server, creds


def _call(ctx_obj: dict[str, Any], rpc: str, request: Any) -> Any:
    import grpc

    from protos import admin_pb2_grpc

    address, creds = _connection(ctx_obj["home"], ctx_obj["server"], ctx_obj["operator"])
    plane = plane_address(address)  # one address or several replicas
    with grpc.secure_channel(plane.target, creds, options=plane.options) as channel:
        stub = admin_pb2_grpc.FleetAdminServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            return getattr(stub, rpc)(request, timeout=30)
        except grpc.RpcError as exc:
            raise click.ClickException(
                f"{rpc} on {address}: {exc.code().name}: {exc.details()}"
            ) from exc


def _as_dict(msg: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def _show(r: Any) -> None:
    from protos.lifecycle import Outcome

    b = r.bundle
    click.echo(f"rollout {r.id}: {b.name} {b.version} (sequence {b.sequence}) — {r.state}")
    if r.reason:
        click.echo(f"  {r.reason}")
    if r.HasField("max_action_divergence"):
        click.echo(f"  shadow action divergence enforced at {r.max_action_divergence:g}")
    else:
        click.echo("  shadow action divergence reported, not enforced")
    if r.attestation:
        click.echo(f"  attestation: {r.attestation}")
    if r.max_tries > 1:
        click.echo(f"  up to {r.max_tries} tries per device for transient failures")
    if r.soak_s > 0:
        click.echo(f"  soak {r.soak_s:g} s after each wave but the last ({r.soak_thresholds})")
    if r.HasField("abort_threshold"):
        click.echo(
            f"  aborted with rollback past {r.abort_threshold:g} of the dispatched robots "
            f"failed or regressed, once {r.abort_min_robots} were dispatched"
        )
    if r.abort:
        click.echo(f"  abort threshold crossed: {r.abort}")
    if r.approval_url:
        click.echo(f"  each wave waits for the approval check at {r.approval_url}")
    if r.offline_policy and r.offline_policy != "wait":
        click.echo(f"  offline devices: {r.offline_policy}")
    if r.allow_unattested:
        click.echo(f"  --allow-unattested: override by {r.unattested_override_by}")
    if r.max_held_s:
        click.echo(f"  held devices waited for up to {r.max_held_s:g} s, then skipped")
    for p in r.plan:
        click.echo(f"  {p.device_id:<24} {p.outcome:<14} {p.detail}")
    for w in r.waves:
        n = len(w.device_ids)
        click.echo(
            f"  wave {w.index}: {n} device(s), {w.state}; committed {w.committed}, "
            f"failed {w.failed}, rolled back {w.rolled_back}"
        )
        if w.soak:
            click.echo(f"    {w.soak}")
        for f in w.soak_figures:
            click.echo(f"      {_figures(f)}")
        if w.approved_by:
            click.echo(f"    approved by {w.approved_by}")
        elif w.approval_required:
            click.echo(f"    waits for approval: edgeflux rollout approve {r.id} --wave {w.index}")
        if w.approval_check:
            click.echo(f"    {w.approval_check}")
        if w.joined:
            click.echo(f"    joined while running: {', '.join(w.joined)}")
        for o in w.held:
            click.echo(f"    {o.device_id}  HELD  {o.reason_code}: {o.detail}")
        for o in w.skipped:
            click.echo(f"    {o.device_id}  skipped: {o.detail}")
        for t in w.retries:
            when = (
                f"; try {t.tries + 1} at {t.next_at.ToDatetime().strftime('%H:%M:%S')} UTC"
                if t.HasField("next_at")
                else ""
            )
            click.echo(
                f"    {t.device_id}  retried, {t.tries} tr{'y' if t.tries == 1 else 'ies'} "
                f"(last: {t.outcome} {t.reason_code}){when}"
            )
        for o in w.outcomes:
            if o.outcome != Outcome.COMMITTED:
                why = ": ".join(x for x in (o.reason_code, o.detail) if x)
                click.echo(f"    {o.device_id}  {o.outcome}  {why}".rstrip())


def _figures(f: Any) -> str:
    """One group's soak figures on one line."""
    text = (
        f"{f.group}: {f.reporting}/{f.devices} reporting, miss rate {f.miss_rate:.4f}, "
        f"{f.interventions_per_min:.2f} interventions/min, loop p99 {f.latency_p99_ms:.2f} ms, "
        f"{f.errors_per_robot:.2f} error events/robot"
    )
    if f.HasField("divergence"):
        text += f", shadow divergence {f.divergence:.4g}"
    return text


def _print(as_json: bool, r: Any) -> None:
    if as_json:
        click.echo(json.dumps(_as_dict(r), sort_keys=True))
    else:
        _show(r)


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: comma-separated fractions like 0.1,0.5,1") from exc


_json = click.option("--json", "as_json", is_flag=True, help="Print the rollout as JSON.")


def _conn(fn: Callable[..., None]) -> Callable[..., None]:
    """--home/--server/--operator also after the subcommand (they override the group's)."""

    @click.option(
        "--home",
        "sub_home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Control-plane home (env EDGEFLUX_CLOUD_HOME).",
    )
    @click.option("--server", "sub_server", help="host:port (default: from the home).")
    @click.option("--operator", "sub_operator", help="Operator identity (default: admin).")
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        sub_home: Path | None,
        sub_server: str | None,
        sub_operator: str | None,
        **kwargs: Any,
    ) -> None:
        obj = click.get_current_context().find_object(dict)
        assert obj is not None
        for key, value in (("home", sub_home), ("server", sub_server), ("operator", sub_operator)):
            if value is not None:
                obj[key] = value
        fn(*args, **kwargs)

    return wrapper


@click.group()
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=None,
    help="Control-plane home (env EDGEFLUX_CLOUD_HOME): CA and operator credentials.",
)
@click.option("--server", help="host:port of the control plane (default: from the home).")
@click.option("--operator", default="admin", show_default=True, help="Operator identity.")
@click.pass_context
def rollout(ctx: click.Context, home_dir: Path | None, server: str | None, operator: str) -> None:
    """Staged rollouts: waves of devices, a failure threshold that pauses, abort/rollback."""
    ctx.obj = {"home": home_dir, "server": server, "operator": operator}


def _id_command(name: str, rpc: str, doc: str) -> Callable[..., None]:
    @rollout.command(name, help=doc)
    @click.argument("rollout_id")
    @_json
    @_conn
    @click.pass_obj
    def cmd(obj: dict[str, Any], rollout_id: str, as_json: bool) -> None:
        from protos import admin_pb2

        _print(as_json, _call(obj, rpc, admin_pb2.RolloutId(id=rollout_id)))

    return cmd


get_cmd = _id_command("get", "GetRollout", "Show a rollout: state, reason, per-wave outcomes.")
pause_cmd = _id_command("pause", "PauseRollout", "Pause: no further wave goes out.")
resume_cmd = _id_command(
    "resume", "ResumeRollout", "Resume; a wave that failed its threshold is accepted."
)


@rollout.command("create")
@click.argument("bundle")
@click.option("--device", "devices", multiple=True, help="Device id (repeatable).")
@click.option("--label", "labels", multiple=True, help="k=v label selector (repeatable).")
@click.option(
    "--waves", default="1", show_default=True, help="Cumulative fractions, e.g. 0.1,0.5,1."
)
@click.option(
    "--max-failure",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Pause when more than this fraction of a wave fails.",
)
@click.option(
    "--health-window",
    type=click.IntRange(1),
    default=600,
    show_default=True,
    help="Seconds a wave's devices have to report an outcome.",
)
@click.option(
    "--max-action-divergence",
    type=click.FloatRange(0),
    default=None,
    help="Refuse the switch when the candidate's shadow actions differ from the active "
    "policy's by more than this (default: reported, not enforced).",
)
@click.option(
    "--window",
    default=None,
    metavar="NAME",
    help="Devices switch only inside this maintenance window (`edgeflux cloud window set`), "
    "besides their labels' windows; they download and stage before it opens.",
)
@click.option(
    "--approval-wave",
    "approval_waves",
    type=click.IntRange(0),
    multiple=True,
    help="Wave N (0 is the first) waits for `edgeflux rollout approve ID --wave N` "
    "before it goes out (repeatable).",
)
@click.option(
    "--approval-url",
    default=None,
    metavar="URL",
    help="Before each wave, POST its facts and figures as JSON to URL; the wave goes out "
    'once it answers {"decision": "allow"}. A deny, a time-out or a bad answer keeps the '
    "wave waiting (asked again with backoff); an allow is audited with the URL and answer.",
)
@click.option(
    "--approval-timeout",
    type=click.FloatRange(0, 60, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds the approval URL has to answer.",
)
@click.option(
    "--offline-policy",
    default="wait",
    show_default=True,
    metavar="wait|skip-after=DURATION",
    help="Devices that stay offline: the wave waits for them up to its health window "
    "(wait), or skips one offline for DURATION (e.g. 30m) since its wave went out; a "
    "skipped device counts as no failure and updates when it comes back.",
)
@click.option(
    "--max-held",
    default=None,
    metavar="DURATION",
    help="How long a wave waits for a device whose switch the robot holds (an update "
    "lock, a closed maintenance window: HELD) — it is neither committed nor failed, and "
    "its health window starts again when it is released; held longer (e.g. 8h, 2d), it "
    "is skipped, counts as no failure and updates when released (default: 1d).",
)
@click.option(
    "--max-tries",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="Tries per device: a device whose update fails for a transient reason "
    "(download, TUF refresh, no safe moment to switch, agent restart) is pointed at the "
    "bundle again, up to this many tries in all, before it counts as a failure of its wave.",
)
@click.option(
    "--retry-backoff",
    type=click.FloatRange(5),
    default=30.0,
    show_default=True,
    help="Seconds before the second try; doubled for each later one, half of it random.",
)
@click.option(
    "--retry-max",
    type=click.FloatRange(5),
    default=600.0,
    show_default=True,
    help="Longest wait between two tries, in seconds.",
)
@click.option(
    "--soak",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds each wave but the last runs the new bundle before the next wave goes "
    "out; then its deadline-miss rate, interventions, loop latency p99, error events and "
    "shadow divergence are compared with the robots not updated yet and with its own "
    "robots before the update, and a regression pauses the rollout (0: no soak).",
)
@click.option(
    "--max-miss-rate-increase",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Soak: how far the wave's deadline-miss rate may exceed the not-yet-updated "
    "robots', or its own before the update (absolute).",
)
@click.option(
    "--max-interventions-increase",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Soak: how far the wave's safety interventions per robot-minute may exceed the "
    "not-yet-updated robots', or its own before the update.",
)
@click.option(
    "--max-latency-p99-ms",
    type=click.FloatRange(0),
    default=None,
    help="Soak: the highest loop latency p99 the wave's robots may report (default: no cap).",
)
@click.option(
    "--max-latency-ratio",
    type=click.FloatRange(1),
    default=1.5,
    show_default=True,
    help="Soak: how many times the not-yet-updated robots' loop latency p99, or the wave's "
    "own on the previous bundle, the wave's may be.",
)
@click.option(
    "--max-divergence",
    type=click.FloatRange(0),
    default=None,
    help="Soak: the highest mean shadow action divergence the wave's robots may have "
    "reported for the bundle (default: no cap).",
)
@click.option(
    "--max-errors-increase",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Soak: how many more error events per robot the wave's robots may send than the "
    "not-yet-updated robots, or than themselves before the update.",
)
@click.option(
    "--abort-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="FRACTION",
    help="Abort the rollout and roll its devices back to their previous bundle once more "
    "than this fraction of the robots it dispatched so far failed (failed, rolled back, "
    "silent) or regressed in a soak (default: never aborted on its own).",
)
@click.option(
    "--abort-min-robots",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help="The abort threshold applies only once at least N robots were dispatched "
    "(default: 10, or every robot of a smaller rollout).",
)
@click.option(
    "--allow-unattested",
    is_flag=True,
    help="Roll out even without a valid, unexpired parity attestation for the bundle "
    "(default: refused). The override is recorded with your operator name and audited.",
)
@_json
@_conn
@click.pass_obj
def create_cmd(
    obj: dict[str, Any],
    bundle: str,
    devices: tuple[str, ...],
    labels: tuple[str, ...],
    waves: str,
    max_failure: float,
    health_window: int,
    max_action_divergence: float | None,
    window: str | None,
    approval_waves: tuple[int, ...],
    approval_url: str | None,
    approval_timeout: float,
    offline_policy: str,
    max_held: str | None,
    max_tries: int,
    retry_backoff: float,
    retry_max: float,
    soak: float,
    max_miss_rate_increase: float,
    max_interventions_increase: float,
    max_latency_p99_ms: float | None,
    max_latency_ratio: float,
    max_divergence: float | None,
    max_errors_increase: float,
    abort_threshold: float | None,
    abort_min_robots: int | None,
    allow_unattested: bool,
    as_json: bool,
) -> None:
    """Start a staged rollout of BUNDLE (name@version of a published bundle).

    Gates: each wave goes out only while the bundle has a valid parity attestation
    (checked at create and before every wave; --allow-unattested overrides), after the
    wave before it passed its failure threshold, and, with --approval-wave, once an
    operator approved it; with --approval-url, once that endpoint allowed it; with
    --soak, after the wave before it ran the bundle that long without a regression of
    its KPIs (deadline-miss rate, interventions, loop latency p99, error events against
    the not-yet-updated robots and against its own robots before the update; shadow
    divergence); with --abort-threshold, too many failed or regressed robots (once
    --abort-min-robots were dispatched) abort it with rollback. With --max-tries,
    transient device failures are retried (exponential backoff with jitter) before they
    count against --max-failure. Devices that join the --label while it runs join its
    current wave; --offline-policy says whether a wave waits for offline devices. With
    --window, the devices download and stage at once but switch only inside that
    maintenance window; a device held so (or by its update lock) is waited for up to
    --max-held, without counting as a failure."""
    from cloud.rollouts.dynamic import parse_duration
    from cloud.rollouts.engine import SpecError
    from protos import admin_pb2, common_pb2

    try:
        max_held_s = parse_duration(max_held) if max_held is not None else 0.0
    except SpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-held") from exc
    name, sep, version = bundle.partition("@")
    if not sep or not name or not version:
        raise click.BadParameter(f"{bundle!r}: expected NAME@VERSION", param_hint="BUNDLE")
    if not devices and not labels:
        raise click.UsageError("give --device ID (repeatable) and/or --label k=v")
    req = admin_pb2.CreateRolloutRequest(
        bundle=common_pb2.BundleRef(name=name, version=version),
        device_ids=list(devices),
        label_selector=",".join(labels),
        wave_fractions=_fractions(waves),
        max_failure_fraction=max_failure,
        health_window_s=health_window,
        max_action_divergence=max_action_divergence,
        maintenance_window=window or "",
        approval_waves=list(approval_waves),
        allow_unattested=allow_unattested,
        max_tries=max_tries,
        retry_base_s=retry_backoff,
        retry_max_s=max(retry_max, retry_backoff),
        soak_s=soak,
        max_miss_rate_increase=max_miss_rate_increase,
        max_interventions_increase=max_interventions_increase,
        abort_threshold=abort_threshold,
        max_latency_p99_ms=max_latency_p99_ms,
        max_latency_ratio=max_latency_ratio,
        max_divergence=max_divergence,
        max_errors_increase=max_errors_increase,
        abort_min_robots=abort_min_robots or 0,
        approval_url=approval_url or "",
        approval_timeout_s=approval_timeout if approval_url else 0.0,
        offline_policy=offline_policy,
        max_held_s=max_held_s,
    )
    _print(as_json, _call(obj, "CreateRollout", req))


@rollout.command("approve")
@click.argument("rollout_id")
@click.option(
    "--wave",
    type=click.IntRange(0),
    default=None,
    help="The wave to approve (default: the next one waiting for approval).",
)
@_json
@_conn
@click.pass_obj
def approve_cmd(obj: dict[str, Any], rollout_id: str, wave: int | None, as_json: bool) -> None:
    """Approve a wave that waits for approval; recorded with your operator name, once."""
    from protos import admin_pb2

    _print(as_json, _call(obj, "ApproveRollout", admin_pb2.RolloutId(id=rollout_id, wave=wave)))


@rollout.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@_json
@_conn
@click.pass_obj
def list_cmd(obj: dict[str, Any], limit: int, as_json: bool) -> None:
    """List rollouts, newest first."""
    from protos import admin_pb2, common_pb2

    resp = _call(
        obj,
        "ListRollouts",
        admin_pb2.ListRolloutsRequest(page=common_pb2.PageRequest(page_size=limit)),
    )
    if as_json:
        click.echo(json.dumps([_as_dict(r) for r in resp.rollouts], sort_keys=True))
        return
    if not resp.rollouts:
        click.echo("no rollouts")
    for r in resp.rollouts:
        done = sum(1 for w in r.waves if w.state in ("succeeded", "overridden"))
        click.echo(
            f"{r.id}  {r.bundle.name} {r.bundle.version}  {r.state:<9}  "
            f"waves {done}/{len(r.waves)}  {r.reason}"
        )


@rollout.command("abort")
@click.argument("rollout_id")
@click.option(
    "--rollback", is_flag=True, help="Point already-updated devices back to their previous bundle."
)
@_json
@_conn
@click.pass_obj
def abort_cmd(obj: dict[str, Any], rollout_id: str, rollback: bool, as_json: bool) -> None:
    """Abort: no further wave goes out (and with --rollback, undo the ones that did)."""
    from protos import admin_pb2

    _print(
        as_json, _call(obj, "AbortRollout", admin_pb2.RolloutId(id=rollout_id, rollback=rollback))
    )
