"""Fenced writes: a leader's writes carry its lease's epoch, and an older one is refused.

The leader lease (``cloud.lease``) keeps one row per lease in ``edgeflux_leases`` with
the epoch of its current term. Inside :func:`fenced`, every store transaction on
PostgreSQL first reads that row ``FOR SHARE`` and raises :class:`FencedError` (writing
nothing) if the epoch is not the context's one; the shared row lock keeps a new term
from starting while such a write is in flight, and ``idle_in_transaction_session_timeout``
bounds how long a stalled writer can hold it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from cloud.store.errors import FencedError

__all__ = ["DEFAULT_LEASE_S", "TABLE", "check_fence", "fenced"]

TABLE = "edgeflux_leases"
DEFAULT_LEASE_S = 5.0

# (lease name, epoch, lease_s) of the term the current context writes for
_FENCE: contextvars.ContextVar[tuple[str, int, float] | None] = contextvars.ContextVar(
    "edgeflux_lease_fence", default=None
)


@contextlib.contextmanager
def fenced(name: str, epoch: int, lease_s: float = DEFAULT_LEASE_S) -> Iterator[None]:
    """Store writes in this context (this thread or task) carry lease `name`'s `epoch`."""
    token = _FENCE.set((name, epoch, lease_s))
    try:
        yield
    finally:
        _FENCE.reset(token)


def check_fence(conn: Any) -> None:
    """In a PostgreSQL transaction on `conn` (SQLAlchemy): refuse it if the context's
    epoch is not the lease's current one. No fence in the context: nothing to check.

    Holds the lease row (``FOR SHARE``) until the transaction ends, so a new term
    (which updates the row) begins only after this write committed or failed.
    """
    fence = _FENCE.get()
    if fence is None:
        return
    name, epoch, lease_s = fence
    conn.exec_driver_sql(
        f"SET LOCAL idle_in_transaction_session_timeout = {max(1000, int(lease_s * 1000))}"
    )
    row = conn.exec_driver_sql(
        f"SELECT epoch FROM {TABLE} WHERE name = %(n)s FOR SHARE", {"n": name}
    ).first()
    current = None if row is None else int(row[0])
    if current != epoch:
        raise FencedError(
            f"write refused: lease {name!r} is in epoch {current}, this writer's term "
            f"(epoch {epoch}) is over"
        )
