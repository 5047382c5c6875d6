"""The `edgeflux` command: one root that mounts each component's own commands.

Usage::

    edgeflux --help
    edgeflux --log-format json bundle verify ./bundles/pendulum-1.0.0

Each command group lives in the package that owns it (`runtime`, `fleet`,
`cloud`, ...) and is imported only when that group is invoked, so `--help`
stays fast and works with only the `device` extra installed.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import click

from edgeflux._version import __version__


@dataclass(frozen=True)
class GroupSpec:
    """Where a command group lives: `target` is `module:attribute`."""

    help: str
    target: str


# The one table of command groups.
GROUPS: dict[str, GroupSpec] = {
    "bundle": GroupSpec(
        "Create, sign, verify, inspect and pack model bundles.",
        "edgeflux.bundle:bundle",
    ),
    "runtime": GroupSpec(
        "Run signed policies on a robot (control loop, A/B slots).",
        "runtime.cli:runtime",
    ),
    "agent": GroupSpec("The fleet agent on a robot (telemetry, updates).", "fleet.cli:agent"),
    "cloud": GroupSpec("The cloud control plane (init, up, publish, devices).", "cloud.cli:cloud"),
    "distill": GroupSpec("Distil a world model into a signed ONNX policy.", "distill.cli:distill"),
    "attest": GroupSpec(
        "Parity attestations: run, get, verify, show.",
        "cloud.attest.cli:attest",
    ),
    "rollout": GroupSpec("Staged rollouts of bundles to the fleet.", "cloud.rollouts.cli:rollout"),
    "flash": GroupSpec(
        "Provision a robot: runtime, identity, trust, first bundle.", "edgeflux.flash:flash_cmd"
    ),
    "robot": GroupSpec(
        "Start a flashed robot: its runtime and agent, supervised.", "edgeflux.robot:robot"
    ),
    "tui": GroupSpec("The operator console (Textual).", "tui.cli:tui"),
    "demo": GroupSpec("Run the whole pipeline end to end on this machine.", "edgeflux.demo:demo"),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = GROUPS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr = spec.target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise click.ClickException(
                f"`edgeflux {cmd_name}` needs a package that is not installed ({missing}). "
                f"Install the matching extra, e.g. pip install 'edgeflux[{_extra_for(cmd_name)}]'."
            ) from exc
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{spec.target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table, so `--help` imports nothing.
        rows = [(name, spec.help) for name, spec in GROUPS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _extra_for(group: str) -> str:
    return {
        "cloud": "cloud",
        "attest": "cloud",
        "rollout": "cloud",
        "distill": "distill",
        "tui": "tui",
        "demo": "all",
    }.get(group, "device")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeflux")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="EDGEFLUX_LOG_FORMAT",
    help="One line per event, as text or JSON.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="EDGEFLUX_LOG_LEVEL",
)
def root(log_format: str, log_level: str) -> None:
    """EdgeFlux: ship learned robot policies to real fleets."""
    from edgeflux._logging import setup_logging

    setup_logging("json" if log_format == "json" else "text", log_level)


def main() -> None:
    """Console-script entry point."""
    try:
        root.main(prog_name="edgeflux")
    except KeyboardInterrupt:  # pragma: no cover - interactive
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
