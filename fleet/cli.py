"""`edgeflux agent ...`: run and inspect the fleet agent on a robot.

Usage::

    edgeflux agent run --root /                      # reads /etc/edgeflux/agent.toml
    edgeflux agent run --root ./robots/r1 --mqtt-port 18883 --device-id r1
    edgeflux agent status --root ./robots/r1 --json
    edgeflux agent lock --reason "mid-task" --ttl 10m --who nav   # hold the switch
    edgeflux agent unlock --who nav
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
    from fleet.update_lock import LOCK_DIR, UpdateLocks

    locks = UpdateLocks(state_dir / LOCK_DIR).read()
    spool = Spool(state_dir / "spool.db")
    try:
        out = {
            "update": json.loads(record.model_dump_json()),
            "locks": [
                {"who": lk.who, "reason": lk.reason, "expires_at": lk.expires_at.isoformat()}
                for lk in locks.locks
            ]
            + [
                {"file": str(p.path), "field": p.field, "problem": p.message}
                for p in locks.problems
            ],
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
    if locks.held:
        click.echo(f"locks: {locks.describe()}")
    s = out["spool"]
    click.echo(
        f"spool: {s['messages']} messages, {s['bytes']} bytes, last sequence {s['last_sequence']}"
    )


_TTL_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _ttl_seconds(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` as seconds."""
    t = text.strip().lower()
    unit = _TTL_UNITS.get(t[-1:])
    number = t[:-1] if unit is not None else t
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 10m, 2h or 1d") from None
    if not value > 0:
        raise click.BadParameter(f"{text!r} is not a positive duration")
    return value


@agent.command("lock")
@root_option
@click.option("--reason", required=True, help="One line for the operator (shown on the plane).")
@click.option("--ttl", "ttl", required=True, help="How long it holds: 90s, 10m, 2h, 1d (max 7d).")
@click.option("--who", default="cli", show_default=True, help="The holder's name (its file).")
def lock_cmd(root: Path, reason: str, ttl: str, who: str) -> None:
    """Hold updates on this robot: they download and stage, but do not switch.

    Writes <agent state>/locks/<who>.json atomically; running it again renews it.
    """
    from fleet.update_lock import LOCK_DIR, LockError, UpdateLocks

    locks = UpdateLocks(RobotLayout.at(root).agent_state / LOCK_DIR)
    try:
        lock = locks.acquire(who, reason, _ttl_seconds(ttl))
    except LockError as exc:
        raise click.ClickException(f"{exc}. No lock was written.") from exc
    click.echo(f"{lock.describe()}; file {lock.path}")


@agent.command("unlock")
@root_option
@click.option("--who", default="cli", show_default=True, help="Whose lock to remove.")
@click.option("--all", "all_", is_flag=True, help="Remove every lock file, valid or not.")
def unlock_cmd(root: Path, who: str, all_: bool) -> None:
    """Release a hold taken with `edgeflux agent lock` (or by an integrator's process)."""
    from fleet.update_lock import LOCK_DIR, LockError, UpdateLocks

    locks = UpdateLocks(RobotLayout.at(root).agent_state / LOCK_DIR)
    if all_:
        removed = locks.release_all()
        click.echo(f"released {len(removed)} lock(s): {', '.join(removed) or '-'}")
        return
    try:
        released = locks.release(who)
    except LockError as exc:
        raise click.ClickException(str(exc)) from exc
    if not released:
        raise click.ClickException(f"no lock held by {who!r} under {locks.directory}")
    click.echo(f"released the lock of {who}")
