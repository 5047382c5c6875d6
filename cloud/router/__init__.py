"""ATP routing: robot tasks routed to backends under QoS classes, adaptive concurrency
windows, atomic budgets, cheap-first escalation, verifier-gated consensus and a
tamper-evident audit log.

The core (`router`, `admission`, `limiter`, `windows`, `health`, `consensus`,
`champion`, `budgets`, `audit`, `verifier`) is pure and does no I/O to backends;
`service` (RouterService over gRPC), `worker` (AgentService backends) and `cli` wrap it.
This module re-exports only the light, pure names.
"""

from cloud.router.backends import BackendSpec, PriceModel, Registry
from cloud.router.budgets import Budget, BudgetLedger, MemoryLedger
from cloud.router.errors import (
    AuditError,
    AuditVerificationError,
    BudgetError,
    RouterConfigError,
    RouterError,
)
from cloud.router.router import Dispatch, Router, RouterConfig, Step
from cloud.router.task import Answer, Constraints, Outcome, Qos, Result, Scope, Task

__all__ = [
    "Answer",
    "AuditError",
    "AuditVerificationError",
    "BackendSpec",
    "Budget",
    "BudgetError",
    "BudgetLedger",
    "Constraints",
    "Dispatch",
    "MemoryLedger",
    "Outcome",
    "PriceModel",
    "Qos",
    "Registry",
    "Result",
    "Router",
    "RouterConfig",
    "RouterConfigError",
    "RouterError",
    "Scope",
    "Step",
    "Task",
]
