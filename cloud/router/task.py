"""The plain data the router works on: tasks, backend answers, and results.

Times are seconds on the router's injectable clock (monotonic in production, simulated
in tests and in the benchmark); `deadline_at` is absolute on that clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

__all__ = ["Answer", "Constraints", "Outcome", "Qos", "Result", "Scope", "Task"]


class Qos(IntEnum):
    """QoS classes; the numbering matches `QosClass` in protos/router.proto."""

    SAFETY = 1
    INTERACTIVE = 2
    BATCH = 3


class Outcome(StrEnum):
    """How a routed task ended; matches `RouteOutcome` in protos/router.proto."""

    OK = "ok"
    REJECTED = "rejected"  # admission said no now: use the local fallback, retry later
    NO_CONSENSUS = "no_consensus"
    FAILED = "failed"
    BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True)
class Scope:
    """Who pays: tenant → site → device. Site and device may be empty."""

    tenant: str
    site: str = ""
    device: str = ""

    def chain(self) -> tuple[str, ...]:
        """Budget scopes from the broadest down: ("t", "t/s", "t/s/d")."""
        out = [self.tenant]
        if self.site:
            out.append(f"{self.tenant}/{self.site}")
            if self.device:
                out.append(f"{self.tenant}/{self.site}/{self.device}")
        return tuple(out)

    def __str__(self) -> str:
        return self.chain()[-1]


@dataclass(frozen=True)
class Constraints:
    """Hard constraints an answer must meet: the safety envelope of the robot's bundle."""

    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()

    @property
    def action_dim(self) -> int:
        return len(self.action_low)


@dataclass(frozen=True)
class Task:
    task_id: str
    task_type: str
    qos: Qos
    deadline_at: float
    scope: Scope
    work_units: float = 1.0
    observation: tuple[float, ...] = ()
    payload: bytes = b""
    constraints: Constraints | None = None
    grant: str = ""
    """The operator's grant that let the caller use `qos` (see `cloud.router.classes`)."""


@dataclass(frozen=True)
class Answer:
    """What a backend returned for one dispatch.

    `label` carries a discrete decision (e.g. a verify task's "safe"/"unsafe");
    `work_units` / `gpu_s` are the backend's own cost report (None: not reported).
    """

    action: tuple[float, ...] = ()
    label: str = ""
    result: bytes = b""
    work_units: float | None = None
    gpu_s: float | None = None
    overloaded: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.overloaded

    def finite(self) -> bool:
        return all(math.isfinite(a) for a in self.action)


@dataclass
class Result:
    task_id: str
    outcome: Outcome
    reason: str = ""
    backend: str = ""
    answer: Answer | None = None
    cost_usd: float = 0.0
    retry_after_s: float = 0.0
    verifier_score: float = 0.0
    decision_id: str = ""
    latency_s: float = 0.0
    escalations: int = 0
    extra: dict[str, object] = field(default_factory=dict)
