"""The agent's configuration: ``[agent]`` in ``<root>/etc/edgeflux/agent.toml``,
overridden by ``EDGEFLUX_AGENT_<FIELD>`` and CLI flags (``runtime.config.load_config``).

Example::

    [agent]
    device_id = "robot-7"
    mqtt_host = "broker.fleet.example"
    mqtt_port = 8883
    grpc_target = "plane.fleet.example:7443"   # or replicas: "10.0.0.5:7443,10.0.0.6:7443"
    telemetry_period_s = 5.0
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protos.plane_target import parse_addresses
from runtime.config import load_config
from runtime.layout import RobotLayout

__all__ = ["AgentConfig", "load_agent_config"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class AgentConfig(BaseModel):
    """Every agent setting, with units in the names."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="this robot's id = its certificate CN")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(8883, ge=1, le=65535)
    mqtt_tls: bool = Field(True, description="mTLS with the device identity (off only in dev)")
    grpc_target: str = Field(
        "127.0.0.1:7443",
        description="control plane DeviceService: HOST:PORT, or replicas as A:PORT,B:PORT",
    )
    cert_file: str = Field("identity/device.crt", description="relative to <root>/etc/edgeflux")
    key_file: str = "identity/device.key"
    ca_file: str = "trust/ca.crt"
    tuf_root_file: str = Field("trust/tuf-root.json", description="TUF bootstrap root (flash)")
    director_key_file: str = Field(
        "trust/director.pub", description="Ed25519 key that signs desired-state documents"
    )

    telemetry_period_s: float = Field(5.0, gt=0, description="one TelemetryBatch per period")
    sample_period_s: float = Field(1.0, gt=0, description="one TelemetryPoint per period")
    spool_telemetry_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    spool_events_max_bytes: int = Field(16 * 1024 * 1024, gt=0)
    spool_telemetry_ttl_s: float = Field(7 * 86400, gt=0)
    spool_events_ttl_s: float = Field(30 * 86400, gt=0)
    inflight_window: int = Field(32, ge=1, le=1000)
    reconnect_base_s: float = Field(0.5, gt=0)
    reconnect_cap_s: float = Field(30.0, gt=0)
    keepalive_s: int = Field(30, ge=2)
    max_payload_bytes: int = Field(64 * 1024, gt=0, description="incoming MQTT cap")
    mqtt5: bool = Field(True, description="try MQTT 5 first (3.1.1 where the broker lacks it)")
    mqtt_session_expiry_s: int = Field(
        86_400,
        ge=0,
        le=0xFFFFFFFF,
        description="MQTT 5: how long the broker keeps this robot's session while offline",
    )

    hint_min_interval_s: float = Field(
        30.0, ge=0, description="at most one TUF refresh per interval, however many hints"
    )
    desired_state_poll_s: float = Field(
        300.0, ge=0, description="also poll GetDesiredState this often (0 = hints only)"
    )
    upload_recordings: bool = Field(
        True, description="upload the flight recorder's finished segments to the plane"
    )
    upload_bytes_per_s: float = Field(256 * 1024, gt=0, description="recording upload pace")
    upload_period_s: float = Field(30.0, gt=0, description="look for new segments this often")
    shadow_ticks: int = Field(500, ge=1)
    health_window_ticks: int = Field(
        500, ge=0, description="ticks the runtime judges a candidate's health before commit"
    )
    shadow_divergence_max: float | None = Field(
        None,
        ge=0,
        description="action-divergence limit in shadow where the rollout sets none "
        "(unset: measured and reported, not enforced)",
    )
    shadow_latency_p99_ms_max: float = Field(5.0, gt=0)
    require_parity_attestation: bool = False
    download_free_margin_bytes: int = Field(
        16 * 1024 * 1024, ge=0, description="free space kept beyond twice the target size"
    )
    download_max_bytes_per_s: int = Field(
        0, ge=0, description="bandwidth cap for update downloads (0: none)"
    )
    download_low_priority: bool = Field(
        False, description="pause update downloads while telemetry is waiting to be sent"
    )
    grpc_probe_timeout_s: float = Field(
        5.0,
        gt=0,
        description="an update whose first gRPC call gets no answer within this falls back "
        "to fetching over MQTT",
    )
    mqtt_fetch: bool = Field(
        True, description="fetch updates over MQTT when the plane's gRPC port is unreachable"
    )
    mqtt_fetch_block_bytes: int = Field(
        256 * 1024, ge=1024, le=1 << 20, description="bytes asked for per MQTT block"
    )
    mqtt_fetch_timeout_s: float = Field(10.0, gt=0, description="wait per MQTT block")
    mqtt_fetch_retries: int = Field(5, ge=0, le=100, description="tries again per MQTT block")
    update_lock_poll_s: float = Field(
        0.5, gt=0, le=60, description="how often a held update looks at the locks again"
    )

    @field_validator("device_id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("use 1-63 letters, digits, '.', '_' or '-'")
        return v

    @field_validator("grpc_target")
    @classmethod
    def _check_target(cls, v: str) -> str:
        parse_addresses(v)  # a TargetError is a ValueError: pydantic names the field
        return v

    def tls_paths(self, layout: RobotLayout) -> tuple[Path, Path, Path]:
        """(ca, cert, key) resolved against ``<root>/etc/edgeflux``."""
        return (
            layout.etc / self.ca_file,
            layout.etc / self.cert_file,
            layout.etc / self.key_file,
        )


def load_agent_config(layout: RobotLayout, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Load ``[agent]`` from the robot's agent.toml (if present) < env < `overrides`."""
    path = layout.agent_config if layout.agent_config.exists() else None
    return load_config(AgentConfig, "agent", toml_path=path, overrides=overrides)
