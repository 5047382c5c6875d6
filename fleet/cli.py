"""`edgeflux agent ...`: run and inspect the fleet agent on a robot.

Usage::

    edgeflux agent run --root /                      # reads /etc/edgeflux/agent.toml
    edgeflux agent run --root ./robots/r1 --mqtt-port 18883 --device-id r1
    edgeflux agent status --root ./robots/r1 --json
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from runtime.config import ConfigError
from runtime.layout import RobotLayout

__all__ = ["agent"]


@click.group()
def agent() -> None:
    """The fleet agent on a robot (telemetry, updates)."""


root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="The robot's filesystem root (a directory per simulated robot).",
)


@agent.command("run")
@root_option
@click.option("--device-id", help="Overrides [agent] device_id.")
@click.option("--mqtt-host")
@click.option("--mqtt-port", type=int)
@click.option("--grpc-target")
@click.option("--telemetry-period-s", type=float)
@click.option("--sample-period-s", type=float)
@click.option("--no-tls", is_flag=True, help="Plain MQTT (development brokers only).")
def run_cmd(
    root: Path,
    device_id: str | None,
    mqtt_host: str | None,
    mqtt_port: int | None,
    grpc_target: str | None,
    telemetry_period_s: float | None,
    sample_period_s: float | None,
    no_tls: bool,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C (the spool is drained briefly on exit)."""
    from fleet.agent import Agent
    from fleet.config import load_agent_config
    from fleet.mqtt import MqttError
    from fleet.spool import SpoolError

    layout = RobotLayout.at(root)
    overrides: dict[str, Any] = {
        "device_id": device_id,
        "mqtt_host": mqtt_host,
        "mqtt_port": mqtt_port,
        "grpc_target": grpc_target,
        "telemetry_period_s": telemetry_period_s,
        "sample_period_s": sample_period_s,
        "mqtt_tls": False if no_tls else None,
    }
    try:
        config = load_agent_config(layout, overrides)
        effects = _effects_factory()
        ag = Agent(layout, config, effects=effects)
    except (ConfigError, MqttError, SpoolError) as exc:
        raise click.ClickException(f"{exc}. The agent did not start.") from exc
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"agent {config.device_id}: MQTT {config.mqtt_host}:{config.mqtt_port}", err=True)
    ag.run(stop)


def _effects_factory() -> Any:
    """The production update effects (TUF + gRPC + RuntimeControl), when installed."""
    try:
        from fleet._effects import robot_effects
    except ImportError:
        return None
    return robot_effects


@agent.command("status")
@root_option
@click.option("--json", "as_json", is_flag=True)
def status_cmd(root: Path, as_json: bool) -> None:
    """Show the persisted update state and the spool's backlog and counters."""
    from fleet.spool import Spool
    from fleet.update import UpdateStateError, UpdateStateFile

    layout = RobotLayout.at(root)
    state_dir = layout.agent_state
    if not state_dir.exists():
        raise click.ClickException(f"no agent state under {state_dir}: has the agent run here?")
    try:
        record = UpdateStateFile(state_dir / "update.json").load()
    except UpdateStateError as exc:
        raise click.ClickException(str(exc)) from exc
    spool = Spool(state_dir / "spool.db")
    try:
        out = {
            "update": json.loads(record.model_dump_json()),
            "spool": {
                "messages": len(spool),
                "bytes": spool.pending_bytes(),
                "last_sequence": spool.last_sequence,
                "counters": spool.counters(),
            },
        }
    finally:
        spool.close()
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return
    u = out["update"]
    click.echo(f"update: {u['state']} {u['reason']} {u['bundle_name']} {u['detail']}".rstrip())
    s = out["spool"]
    click.echo(
        f"spool: {s['messages']} messages, {s['bytes']} bytes, last sequence {s['last_sequence']}"
    )
