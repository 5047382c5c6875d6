"""What `edgeflux demo` runs with (options, the demo fleet) and what it reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ATTESTED_ONLY",
    "BUNDLE_NAME",
    "LEARNED_TEACHER_BUDGET_S",
    "ROBOTS",
    "DemoOptions",
    "DemoSummary",
    "StageResult",
]

ROBOTS = ("robot-1", "robot-2", "robot-3")
ATTESTED_ONLY = "robot-3"
"""This robot runs with `require_parity_attestation`: it refuses unattested bundles."""
BUNDLE_NAME = "pendulum"
LEARNED_TEACHER_BUDGET_S = 15 * 60
"""What `--teacher world-model` may add to the demo: training one world model (v1.1.0 is
distilled from the same one) and distilling from its actor twice."""


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    quick: bool = False
    teacher: str = "oracle"
    telemetry_s: float = 6.0
    fresh: bool = False

    @property
    def distill_args(self) -> list[str]:
        if self.quick:
            return ["--rounds", "3", "--eval-episodes", "10", "--epochs", "15"]
        return ["--eval-episodes", "30"]

    @property
    def campaign_episodes(self) -> int:
        return 30 if self.quick else 60


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "failed"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoSummary:
    stages: list[StageResult] = field(default_factory=list)
    robots: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)
    attestation: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    all_committed_v2: bool = False
    broken_refused_everywhere: bool = False
    attestation_verified: bool = False

    @property
    def ok(self) -> bool:
        return (
            all(s.status == "done" for s in self.stages)
            and self.all_committed_v2
            and self.broken_refused_everywhere
            and self.attestation_verified
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out
