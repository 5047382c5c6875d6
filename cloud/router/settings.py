"""The `[router]` table of a control plane's config file, as pydantic models.

Each model turns into the router's own types (`BackendSpec`, `Budget`, ...) with the
same validation the router applies, so a bad table is refused at start naming the
entry and field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.router.backends import BackendSpec, PriceModel
from cloud.router.budgets import Budget
from cloud.router.errors import RouterConfigError
from cloud.router.task import Qos

__all__ = ["BackendSettings", "BudgetSettings", "ChallengerSettings", "RouterSettings", "by_qos"]


class BackendSettings(BaseModel):
    """One backend: where it listens and what it can do."""

    model_config = ConfigDict(extra="forbid")

    name: str
    address: str = Field(description="host:port of its AgentService")
    tier: int = 0
    task_types: list[str]
    quality: dict[str, float] = Field(default_factory=dict)
    capacity: int = 4
    per_call_usd: float = 0.0
    per_work_unit_usd: float = 0.0
    per_gpu_second_usd: float = 0.0
    latency_s_per_work_unit: float = 0.05
    timeout_s: float = 30.0

    def spec(self) -> BackendSpec:
        return BackendSpec(
            self.name,
            self.tier,
            frozenset(self.task_types),
            PriceModel(self.per_call_usd, self.per_work_unit_usd, self.per_gpu_second_usd),
            capacity=self.capacity,
            quality=dict(self.quality),
            latency_s_per_work_unit=self.latency_s_per_work_unit,
            timeout_s=self.timeout_s,
        ).validate()


class BudgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str
    limit_usd: float
    limit_work_units: float | None = None
    soft_fraction: float = 0.8
    safety_allowance_usd: float = 0.0
    period_s: float = 30 * 86400.0

    def budget(self) -> Budget:
        return Budget(
            self.scope,
            self.limit_usd,
            self.limit_work_units,
            self.soft_fraction,
            self.safety_allowance_usd,
            self.period_s,
        ).validate()


class ChallengerSettings(BaseModel):
    """Mirror a share of one task type's traffic to a challenger backend."""

    model_config = ConfigDict(extra="forbid")

    task_type: str
    champion: str
    challenger: str
    mirror_share: float = Field(0.05, ge=0, le=1)
    min_pairs: int = Field(30, ge=1)


class RouterSettings(BaseModel):
    """`[router]` settings of a control plane (env: ``EDGEFLUX_ROUTER_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    backends: list[BackendSettings] = Field(default_factory=list)
    budgets: list[BudgetSettings] = Field(default_factory=list)
    tenant_label: str = Field("tenant", description="device label naming its tenant")
    site_label: str = Field("site", description="device label naming its site")
    default_tenant: str = Field("default", description="tenant of a device without the label")
    challengers: list[ChallengerSettings] = Field(default_factory=list)
    qos_shares: dict[str, float] = Field(
        default_factory=lambda: {"SAFETY": 0.3, "INTERACTIVE": 0.5, "BATCH": 0.2},
        description="guaranteed share of each backend's concurrency limit per class",
    )
    quality_floor: dict[str, float] = Field(
        default_factory=lambda: {"SAFETY": 0.9, "INTERACTIVE": 0.7, "BATCH": 0.5},
        description="least predicted quality a backend needs to serve a class",
    )
    class_grants: dict[str, list[str]] = Field(
        default_factory=lambda: {"SAFETY": list[str]()},
        description="devices that may use a class: 'device:<id>', 'label:<k>=<v>' or '*'; "
        "a class not listed is open to every device (SAFETY: nobody by default)",
    )
    max_payload_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="largest task payload per class (default SAFETY 64 KiB, "
        "INTERACTIVE 256 KiB, BATCH 1 MiB)",
    )
    learning: bool = Field(
        False,
        description="learn from verifier outcomes where a task's chain starts and where a "
        "backend below a class's quality floor suffices (cloud.router.learning)",
    )
    accept_score: float = Field(0.6, ge=0, le=1, description="verifier score that accepts")
    max_escalations: int = Field(2, ge=0, le=5)
    reservation_ttl_s: float | None = Field(
        None,
        gt=0,
        description="longest hold of a budget reservation; default: the longest backend "
        "timeout_s plus reservation_grace_s. A backend that could outlive it is refused.",
    )
    reservation_grace_s: float = Field(
        30.0, ge=0, description="a reservation outlives its call's deadline by this much"
    )
    audit_every_n: int = Field(256, gt=0, description="sign a tree head every N records")
    audit_every_s: float = Field(10.0, gt=0, description="... or every T seconds")


def by_qos(
    values: Mapping[str, Any], field: str, kind: Callable[[Any], Any] = float
) -> dict[Qos, Any]:
    out: dict[Qos, Any] = {}
    for name, v in values.items():
        try:
            out[Qos[name.upper()]] = kind(v)
        except KeyError:
            raise RouterConfigError(
                f"[router] {field}: unknown class {name!r}; expected SAFETY, INTERACTIVE, BATCH"
            ) from None
    return out
