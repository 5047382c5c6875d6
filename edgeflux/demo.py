"""`edgeflux demo`: the whole pipeline on one machine, on embedded defaults.

Usage::

    edgeflux demo                    # run it, then keep the stack up until Ctrl-C
    edgeflux demo --exit --json demo/summary.json
    edgeflux demo --fresh            # forget the cached policies and retrain them

What it does, each step through the same commands an operator would type (every
component runs as its own process; logs in ``demo/logs/``):

1. ``cloud init`` + ``cloud up`` (SQLite, the embedded MQTT broker with ingest,
   loopback);
2. ``distill run`` a Pendulum policy (oracle MPPI teacher) and sign it;
3. ``attest run`` a parity campaign; the attestation is stored in the plane;
4. ``cloud publish``; ``cloud device add`` + ``flash`` three simulated robots
   (``dir:`` targets under ``demo/robots/``); start their runtimes (gymnasium
   Pendulum robots) and agents;
5. live telemetry through the admin gRPC API;
6. distil, attest and publish v2, and roll it out in two waves (``rollout create``:
   one robot first, the rest after it committed); watch every robot commit it;
7. push a properly signed bundle whose policy outputs NaN; watch every robot refuse
   it and keep running v2 (robots 1-2 catch the NaN in shadow; robot-3 runs with
   ``require_parity_attestation`` and refuses the unattested bundle outright, while it
   accepted the attested v2);
8. ``attest get`` the v2 attestation over gRPC (mTLS) and verify it offline.

Distilled policies are cached in ``demo/cache`` (keyed by seed and budget) and
re-signed for each run's fresh control plane; ``--fresh`` retrains them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from edgeflux._demo_config import DemoOptions, DemoSummary, StageResult
from edgeflux._demo_stages import Demo
from edgeflux._processes import ProcessGroup

__all__ = ["DemoOptions", "DemoSummary", "demo", "run_demo"]


def run_demo(opts: DemoOptions, echo: Callable[[str], None], keep_running: bool) -> DemoSummary:
    procs = ProcessGroup(opts.workdir / "logs")
    d = Demo(opts, procs, echo)
    if opts.teacher == "world-model":
        echo(d.learned_teacher_plan(first=("1.0.0", 0)))
    stages: list[tuple[str, Callable[[], str]]] = [
        ("prepare", d.reset),
        ("cloud up", d.cloud_up),
        ("distil policy v1.0.0", lambda: d.distill("1.0.0", 1, seed=0)),
        ("parity attestation v1.0.0", lambda: d.attest("1.0.0")),
        ("publish + flash 3 robots", d.publish_and_flash),
        ("live telemetry", lambda: d.live_telemetry(opts.telemetry_s)),
        ("distil policy v1.1.0", lambda: d.distill("1.1.0", 2, seed=1)),
        ("parity attestation v1.1.0", lambda: d.attest("1.1.0")),
        ("staged rollout of v1.1.0", d.rollout_v2),
        ("broken bundle is refused", d.broken_bundle),
        ("fetch attestation over gRPC", d.fetch_attestation),
    ]
    with procs:
        for name, fn in stages:
            start = time.monotonic()
            echo(f"[bold]▶ {name}[/bold]")
            try:
                detail = fn()
            except KeyboardInterrupt:
                d.summary.stages.append(
                    StageResult(name, "failed", "interrupted", time.monotonic() - start)
                )
                echo(f"[yellow]interrupted during {name}; stopping everything[/yellow]")
                break
            except Exception as exc:  # reported as the stage's failure; processes still stop
                d.summary.stages.append(
                    StageResult(name, "failed", str(exc), time.monotonic() - start)
                )
                echo(f"[red]✘ {name}: {exc}[/red]")
                break
            took = time.monotonic() - start
            d.summary.stages.append(StageResult(name, "done", detail, took))
            echo(f"[green]✔[/green] {name} ({took:.1f}s): {detail}")
        if keep_running and d.summary.ok:
            _print_next_steps(d, echo)
            echo("The stack keeps running; press Ctrl-C to stop everything.")
            try:
                while all(p.alive() for p in procs.procs):
                    time.sleep(1)
                echo("[red]a component exited; stopping[/red]")
            except KeyboardInterrupt:
                echo("stopping…")
    return d.summary


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_next_steps(d: Demo, echo: Callable[[str], None]) -> None:
    home = d.home
    echo(
        "\n[bold]Where things live[/bold]\n"
        f"  control plane home   {home}  (gRPC {d.address}, MQTT {d.broker_url})\n"
        f"  robots               {d.robots_dir}/robot-N  (runtime.sock, slots, state)\n"
        f"  bundles              {d.bundles}\n"
        f"  logs                 {d.opts.workdir / 'logs'}\n"
        "[bold]Try next[/bold] (in another terminal, with .venv activated)\n"
        f"  edgeflux tui --cloud {d.address} --cert {home}/pki/operators/admin.crt "
        f"--key {home}/pki/operators/admin.key --ca {home}/pki/ca.crt\n"
        f"  edgeflux cloud devices --home {home}\n"
        f"  edgeflux runtime status --root {d.robots_dir}/robot-1\n"
        f"  edgeflux attest show {d.opts.workdir}/attestation-1.1.0.dsse.json\n"
    )


@click.command("demo")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where the demo keeps its control plane, robots, logs and cache.",
)
@click.option("--exit", "exit_after", is_flag=True, help="Stop everything when done.")
@click.option("--fresh", is_flag=True, help="Also forget cached policies (retrain).")
@click.option("--quick", is_flag=True, help="Smaller training and campaign budgets (CI).")
@click.option(
    "--teacher",
    type=click.Choice(["oracle", "world-model"]),
    default="oracle",
    show_default=True,
    help="world-model: learn the teacher (trains a world model first; the demo says "
    "how long that takes on this machine before it starts).",
)
@click.option("--telemetry-seconds", type=float, default=6.0, show_default=True)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a machine-readable summary here.",
)
def demo(
    workdir: Path,
    exit_after: bool,
    fresh: bool,
    quick: bool,
    teacher: str,
    telemetry_seconds: float,
    json_out: Path | None,
) -> None:
    """Run the whole pipeline end to end on this machine."""
    from rich.console import Console

    # SIGTERM (systemd, `kill`, a CI runner) stops everything the demo started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    console = Console()
    opts = DemoOptions(
        workdir.absolute(), quick=quick, teacher=teacher, telemetry_s=telemetry_seconds, fresh=fresh
    )
    start = time.monotonic()
    console.print(f"[bold]EdgeFlux demo[/bold] in {opts.workdir} (logs: {opts.workdir}/logs)")
    summary = run_demo(
        opts, lambda msg: console.print(msg, highlight=False), keep_running=not exit_after
    )
    took = time.monotonic() - start
    console.print(
        f"\n[bold]{'OK' if summary.ok else 'FAILED'}[/bold] in {took:.0f}s: "
        f"v1.1.0 committed on all robots: {summary.all_committed_v2}; broken bundle refused "
        f"everywhere: {summary.broken_refused_everywhere}; attestation verified: "
        f"{summary.attestation_verified}"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        doc = summary.to_json()
        doc["seconds"] = took
        json_out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if not summary.ok:
        sys.exit(1)
    os.environ.pop("EDGEFLUX_CLOUD_EMBEDDED_BROKER_PORT", None)
