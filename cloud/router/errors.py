"""Errors of the ATP router, grouped by who must react.

- `RouterConfigError`: the operator declared something impossible (a backend with a
  negative price, a QoS share outside [0, 1]); fix the configuration.
- `BudgetError`: the budget ledger was used wrongly (unknown reservation, bad amount).
- `AuditError` / `AuditVerificationError`: the audit log cannot be written, or a
  check found it tampered with; the message names the record or tree head.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "AuditVerificationError",
    "BudgetError",
    "RouterConfigError",
    "RouterError",
]


class RouterError(Exception):
    """Base class of every error the router raises."""


class RouterConfigError(RouterError, ValueError):
    """A backend, budget or router setting is invalid; the message names the field."""


class BudgetError(RouterError):
    """The budget ledger was asked something it cannot do (unknown reservation, bad amount)."""


class AuditError(RouterError):
    """The audit log could not be read or written."""


class AuditVerificationError(AuditError):
    """An audit log or tree head failed verification; the message says where and why."""
