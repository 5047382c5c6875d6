"""Text of the files a flash writes besides data: systemd units and the first-boot installer.

Units reference robot paths (`/opt/edgeflux`, `/etc/edgeflux`): the flash target is
the robot's root filesystem (a mounted SD card, an SSH prefix, an image).
"""

from __future__ import annotations

__all__ = [
    "REALTIME_DEFAULTS",
    "agent_unit",
    "install_script",
    "install_unit",
    "runtime_unit",
]

# What a flash writes into the robot's runtime.toml unless the operator chose otherwise
# (`--runtime-option realtime_priority=null` turns real-time off): the loop thread on
# SCHED_FIFO 50 (other runtime threads at 49), memory locked. The runtime unit grants
# the privileges for it.
REALTIME_DEFAULTS: dict[str, object] = {"realtime_priority": 50, "lock_memory": True}

# A hardening baseline that still lets the runtime reach robot I/O (UDP, serial via
# DeviceAllow in a drop-in) and write only its own state.
_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
UMask=0077
"""


def install_unit() -> bytes:
    return b"""\
[Unit]
Description=EdgeFlux install (offline, from /opt/edgeflux/wheelhouse; a no-op when current)
Before=edgeflux-runtime.service edgeflux-agent.service

[Service]
Type=oneshot
ExecStart=/opt/edgeflux/install.sh
RemainAfterExit=yes
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
"""


def runtime_unit() -> bytes:
    return (
        """\
[Unit]
Description=EdgeFlux runtime (signed policy control loop)
After=edgeflux-install.service
Requires=edgeflux-install.service
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
# READY=1 once the loop runs; WATCHDOG=1 only while it keeps ticking (runtime.sdnotify).
Type=notify
NotifyAccess=main
WatchdogSec=10s
ExecStart=/opt/edgeflux/venv/bin/edgeflux --log-format json runtime run --root /
Restart=always
RestartSec=2
TimeoutStopSec=10
KillSignal=SIGTERM
RuntimeDirectory=edgeflux
RuntimeDirectoryPreserve=yes
StateDirectory=edgeflux
ReadWritePaths=/var/lib/edgeflux /run/edgeflux
# Real-time: the runtime puts its loop thread on SCHED_FIFO itself (realtime_priority
# in runtime.toml) and locks its memory (lock_memory); these grant it the right to, as
# root or as a User= (ambient capabilities). Pin the whole service to cores with a
# drop-in (CPUAffinity=), the loop thread alone with loop_cpus in runtime.toml.
AmbientCapabilities=CAP_SYS_NICE CAP_IPC_LOCK
LimitRTPRIO=99
LimitMEMLOCK=infinity
CPUSchedulingResetOnFork=yes
Nice=-10
"""
        + _HARDENING
        + """
[Install]
WantedBy=multi-user.target
"""
    ).encode()


def agent_unit() -> bytes:
    return (
        """\
[Unit]
Description=EdgeFlux fleet agent (telemetry, updates)
After=edgeflux-runtime.service network-online.target
Wants=network-online.target
BindsTo=edgeflux-runtime.service

[Service]
Type=simple
ExecStart=/opt/edgeflux/venv/bin/edgeflux --log-format json agent run --root /
Restart=always
RestartSec=5
TimeoutStopSec=10
StateDirectory=edgeflux
ReadWritePaths=/var/lib/edgeflux /run/edgeflux
"""
        + _HARDENING
        + """
[Install]
WantedBy=multi-user.target
"""
    ).encode()


def install_script(extras: str, version: str) -> bytes:
    """First-boot installer: builds /opt/edgeflux/venv from the wheelhouse with no network.

    It derives the root from its own location, so simulated robots (a directory as
    root) install the same way as real ones. The completion stamp records what was
    installed (`edgeflux[extras]==version`): a venv whose stamp is missing (an
    interrupted install) or names anything else (a reflash with other extras or
    another version) is discarded and rebuilt, so the robot converges to its flash.
    """
    return f"""#!/bin/sh
# EdgeFlux offline installer (written by `edgeflux flash`).
set -eu
OPT="$(cd "$(dirname "$0")" && pwd)"
VENV="$OPT/venv"
PY="${{EDGEFLUX_PYTHON:-}}"
if [ -z "$PY" ]; then
  # The first interpreter that actually runs and is new enough (shims may exist but fail).
  for candidate in python3 python3.13 python3.12 python3.11; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "edgeflux install: no Python >= 3.11 found (set EDGEFLUX_PYTHON)" >&2
  exit 1
fi
WANT="edgeflux[{extras}]=={version}"
if [ "$(cat "$VENV/.edgeflux-installed" 2>/dev/null)" = "$WANT" ]; then
  echo "edgeflux install: $WANT already installed in $VENV"
  exit 0
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-index --find-links "$OPT/wheelhouse" "$WANT"
echo "$WANT" > "$VENV/.edgeflux-installed"
echo "edgeflux install: installed $WANT into $VENV"
""".encode()
