"""`edgeflux cloud ...`: create, run and administer a control plane.

Usage::

    edgeflux cloud init ./plane                      # CA, certs, TUF repo, keys, config
    edgeflux cloud up --home ./plane                 # gRPC (mTLS) + metrics + dev broker
    edgeflux cloud device add robot-1 --home ./plane --label site=lab
    edgeflux cloud devices --home ./plane --json
    edgeflux cloud publish ./bundles/pendulum-1.0.0 --home ./plane
    edgeflux cloud device revoke robot-1 --home ./plane

Subcommands are a lazy table (like the root CLI), each imported only when invoked:
the plane and its bundles in `cloud.cli_plane`, the fleet's identities in
`cloud.cli_fleet`, other packages' commands in their own modules; mount one by adding
a line to ``COMMANDS``. The home may also come from ``EDGEFLUX_CLOUD_HOME``.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["COMMANDS", "cloud"]

# name -> (short help, "module:attribute" of a click command)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": (
        "Create a control-plane home (CA, certificates, TUF repository, keys).",
        "cloud.cli_plane:init_cmd",
    ),
    "up": ("Run the control plane (gRPC with mTLS, metrics, broker).", "cloud.cli_plane:up_cmd"),
    "publish": (
        "Verify a bundle and publish it into the TUF repository.",
        "cloud.cli_plane:publish_cmd",
    ),
    "bundles": ("List published bundles.", "cloud.cli_plane:bundles_cmd"),
    "device": ("Add or revoke a device identity.", "cloud.cli_fleet:device_group"),
    "devices": ("List devices.", "cloud.cli_fleet:devices_cmd"),
    "crl": ("Rewrite the fleet CRL (pki/crl.pem) for the broker.", "cloud.cli_fleet:crl_cmd"),
    "tuf": ("TUF repository: rotate a role's key, show status.", "cloud.cli_plane:tuf_group"),
    "operator": (
        "Issue an operator certificate (role admin | viewer).",
        "cloud.cli_fleet:operator_group",
    ),
    "window": (
        "Maintenance windows per label: set, list, remove.",
        "cloud.windows_cli:window_group",
    ),
    "push": ("Push a bundle to devices now (desired state + MQTT hint).", "cloud.push:push_cmd"),
    "audit": (
        "Show the audit log (who changed what; pushes left out).",
        "cloud.audit_cli:audit_cmd",
    ),
    "router": ("ATP routing: audit log verify, stats.", "cloud.router.cli:router_group"),
    "agent": ("Serve a routing backend (--kind planner|policy).", "cloud.router.worker:agent_cmd"),
    "ingest": ("Run MQTT ingest (telemetry, events, presence).", "cloud.ingest:ingest_cmd"),
    "quarantine": (
        "Show messages ingest dropped (reason, detail, payload).",
        "cloud.ingest:quarantine_cmd",
    ),
    "recordings": (
        "Flight recordings: export MCAP segments as an episode dataset (--npz).",
        "cloud.recordings.cli:recordings",
    ),
    "broker-config": (
        "Write a Mosquitto config (mTLS, certificate identity, ACLs).",
        "cloud.broker_config:broker_config",
    ),
}


class _LazyCloud(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr = entry[1].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{entry[1]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, h) for name, (h, _) in COMMANDS.items()])


@click.group(cls=_LazyCloud)
def cloud() -> None:
    """The cloud control plane (init, up, publish, devices)."""
