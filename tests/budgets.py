"""Budgets of the heavy (`slow`) runs: large on a developer's machine, small in CI.

CI runs every test, `slow` ones included, on two cores within a time limit; the large
budgets exist to be run by hand (`scripts/test -m slow`). `EDGEFLUX_FULL_BUDGETS=1`
forces the large ones in CI too.
"""

from __future__ import annotations

import os

__all__ = ["slow_budget"]


def slow_budget(full: int, ci: int) -> int:
    """`full` normally, `ci` when running under CI (``CI`` set) unless full budgets are forced."""
    in_ci = bool(os.environ.get("CI")) and os.environ.get("EDGEFLUX_FULL_BUDGETS") != "1"
    return ci if in_ci else full
