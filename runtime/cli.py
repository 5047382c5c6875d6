"""`edgeflux runtime ...`: run the signed runtime on a robot root, ask it for status, bench it.

::

    edgeflux runtime run --root /tmp/robot-1 --bundle ./bundles/pendulum-1.0.0 \\
        --adapter gym --adapter-option env=Pendulum-v1
    edgeflux runtime status --root /tmp/robot-1 --json
    edgeflux runtime bench ./bundles/pendulum-1.0.0 --trust /tmp/robot-1/etc/edgeflux/trust
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["parse_key_values", "runtime"]


def parse_key_values(pairs: tuple[str, ...], flag: str = "--adapter-option") -> dict[str, Any]:
    """KEY=VALUE pairs from repeatable flags; VALUE is JSON when it parses (numbers,
    booleans, lists), else a string. Shared by `runtime run` and `edgeflux flash`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=flag)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@click.group(name="runtime")
def runtime() -> None:
    """Run signed policies on a robot (control loop, A/B slots, RuntimeControl socket)."""


@runtime.command("run")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The robot's filesystem prefix (/ on a real robot).",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Install this bundle first if the robot has none (it must verify).",
)
@click.option("--adapter", help="Robot I/O adapter (gym, udp, null or an entry point).")
@click.option(
    "--adapter-option",
    "adapter_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Adapter option; VALUE is JSON if it parses, else a string. Repeatable.",
)
@click.option("--rate-hz", type=float, help="Override the manifest's control rate.")
@click.option(
    "--duration", type=float, help="Stop after this many seconds (default: until SIGTERM/Ctrl-C)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
def run_cmd(
    root: Path,
    bundle: Path | None,
    adapter: str | None,
    adapter_options: tuple[str, ...],
    rate_hz: float | None,
    duration: float | None,
    as_json: bool,
) -> None:
    """Run the control loop on ROOT until stopped, serving RuntimeControl on its socket."""
    from runtime.adapters import AdapterError
    from runtime.bundle import BundleError
    from runtime.config import ConfigError, load_runtime_config
    from runtime.layout import RobotLayout
    from runtime.service import RuntimeService
    from runtime.session import SessionError
    from runtime.slots import SlotError

    layout = RobotLayout.at(root)
    overrides: dict[str, Any] = {"adapter": adapter, "rate_hz": rate_hz}
    if adapter_options:
        overrides["adapter_options"] = parse_key_values(adapter_options)
    try:
        config = load_runtime_config(layout, overrides)
        svc = RuntimeService(layout, config)
        svc.start(first_bundle=bundle)
    except (ConfigError, SlotError, BundleError, SessionError, AdapterError) as exc:
        raise click.ClickException(str(exc)) from exc
    svc.install_signal_handlers()
    st = svc.status()
    assert st.active is not None
    click.echo(
        f"running {st.active.label} from slot {st.active.slot} on {st.provider} at "
        f"{svc.loop.rate_hz if svc.loop else 0:g} Hz; control socket {layout.runtime_socket}",
        err=True,
    )
    try:
        svc.wait(duration)
    finally:
        snap = svc.status().metrics
        died = svc.loop_error
        svc.stop()
    if died is not None:
        raise click.ClickException(
            f"the control loop died after {snap.ticks} ticks: {type(died).__name__}: {died}"
        )
    episodes = getattr(svc.adapter, "episode_returns", None)
    data = {
        "ticks": snap.ticks,
        "deadline_misses": snap.deadline_misses,
        "latency_p50_ms": snap.latency_p50_ms,
        "latency_p99_ms": snap.latency_p99_ms,
        "latency_p999_ms": snap.latency_p999_ms,
        "latency_max_ms": snap.latency_max_ms,
        "jitter_p99_ms": snap.jitter_p99_ms,
        "interventions": snap.interventions,
        "swaps": svc.status().swaps,
        "swap_misses": svc.loop.counters.swap_misses if svc.loop else 0,
    }
    if episodes:
        data["episodes"] = len(episodes)
        data["mean_episode_return"] = sum(episodes) / len(episodes)
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(
            f"stopped after {snap.ticks} ticks: {snap.deadline_misses} deadline misses, latency "
            f"p50 {snap.latency_p50_ms:.3f} ms p99 {snap.latency_p99_ms:.3f} ms "
            f"max {snap.latency_max_ms:.3f} ms, interventions {snap.interventions or 'none'}"
        )


@runtime.command("status")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def status_cmd(root: Path, as_json: bool) -> None:
    """Ask the runtime running on ROOT for its state, slots and metrics."""
    from google.protobuf.json_format import MessageToDict

    from runtime.control_client import RuntimeControlClient, RuntimeControlError
    from runtime.layout import RobotLayout

    sock = RobotLayout.at(root).runtime_socket
    if not sock.exists():
        raise click.ClickException(f"no runtime is running on {root} (no socket at {sock})")
    try:
        with RuntimeControlClient(sock, timeout_s=5) as client:
            st = client.status()
    except RuntimeControlError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(MessageToDict(st, preserving_proto_field_name=True)))
        return
    m = st.metrics
    a = st.active.bundle
    click.echo(f"state      {st.state}")
    click.echo(f"active     slot {st.active.slot}: {a.name} {a.version} (sequence {a.sequence})")
    if st.HasField("pending"):
        p = st.pending.bundle
        click.echo(f"pending    slot {st.pending.slot}: {p.name} {p.version}")
    click.echo(f"provider   {st.execution_provider}")
    click.echo(f"scheduling {st.scheduling or 'unknown'}")
    if st.scheduling and not st.realtime:
        click.echo("warning: the control loop runs without real-time priority", err=True)
    if st.engine_check:
        click.echo(f"engine     {st.engine_check}")
    click.echo(
        f"loop       {m.rate_hz:g} Hz, {m.ticks} ticks, {m.deadline_misses} misses, "
        f"p50 {m.latency_p50_ms:.3f} ms, p99 {m.latency_p99_ms:.3f} ms, "
        f"jitter p99 {m.jitter_p99_ms:.3f} ms"
    )
    click.echo(f"interventions {dict(m.interventions) or 'none'}")
    if st.HasField("failure"):
        f = st.failure
        click.echo(f"last failure  {f.code}: {f.detail}" if f.detail else f"last failure  {f.code}")
    else:
        click.echo("last failure  none")


@runtime.command("bench")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--trust",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Trust store to verify the bundle with (else it runs unverified, with a warning).",
)
@click.option(
    "--seconds", type=float, default=5.0, show_default=True, help="Length of the loop run."
)
@click.option("--rate-hz", type=float, help="Loop rate (default: the manifest's).")
@click.option("--steps", type=int, default=20000, show_default=True)
@click.option(
    "--rt-priority",
    type=click.IntRange(1, 99),
    help="Run the loop SCHED_FIFO at this priority (needs CAP_SYS_NICE).",
)
@click.option("--json", "as_json", is_flag=True)
def bench_cmd(
    bundle: Path,
    trust: Path | None,
    seconds: float,
    rate_hz: float | None,
    steps: int,
    rt_priority: int | None,
    as_json: bool,
) -> None:
    """Per-tick cost against a bare InferenceSession.run, and a loop's deadline-miss rate."""
    from rich.progress import Progress

    from runtime import _bench
    from runtime.bundle import BundleError, verify_bundle
    from runtime.loop import LoadedPolicy
    from runtime.manifest import ManifestError, load_manifest
    from runtime.session import PolicySession, SessionError
    from runtime.trust import TrustStore

    try:
        if trust is not None:
            manifest = verify_bundle(bundle, TrustStore(trust)).manifest
        else:
            click.echo("warning: bundle not verified (no --trust given)", err=True)
            manifest = load_manifest(bundle)
        session = PolicySession(bundle / "policy.onnx", warmup_runs=50)
    except (BundleError, ManifestError, SessionError) as exc:
        raise click.ClickException(str(exc)) from exc
    policy = LoadedPolicy(manifest=manifest, session=session)
    rate = rate_hz or manifest.control.rate_hz
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmarking", total=3)
        obs = _bench.observation_inside(policy)
        bare = _bench.bare_run(session, obs, steps)
        progress.advance(task)
        ours = _bench.tick_path(policy, steps)
        progress.advance(task)
        t0 = time.perf_counter()
        snap = _bench.loop_run(policy, rate, seconds, rt_priority)
        progress.advance(task)
    result = {
        "bundle": f"{manifest.name}@{manifest.version}",
        "provider": session.provider,
        "bare_median_us": bare.median_us,
        "bare_p99_us": bare.p99_us,
        "tick_median_us": ours.median_us,
        "tick_p99_us": ours.p99_us,
        "median_ratio": ours.median_us / bare.median_us,
        "p99_ratio": ours.p99_us / bare.p99_us,
        "loop_rate_hz": rate,
        "loop_seconds": time.perf_counter() - t0,
        "loop_ticks": snap.ticks,
        "loop_miss_rate": snap.miss_rate,
        "loop_jitter_p99_ms": snap.jitter_p99_ms,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{'path':<28}{'median µs':>12}{'p99 µs':>12}")
    click.echo(f"{'InferenceSession.run':<28}{bare.median_us:>12.2f}{bare.p99_us:>12.2f}")
    click.echo(f"{'runtime tick path':<28}{ours.median_us:>12.2f}{ours.p99_us:>12.2f}")
    click.echo(f"ratio: median {result['median_ratio']:.2f}x, p99 {result['p99_ratio']:.2f}x")
    click.echo(
        f"loop {rate:g} Hz for {seconds:g} s: {snap.ticks} ticks, miss rate "
        f"{snap.miss_rate:.4%}, jitter p99 {snap.jitter_p99_ms:.3f} ms"
    )
