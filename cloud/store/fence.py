"""Fenced writes: a leader's writes carry its lease's epoch, and an older one is refused.

The leader lease (``cloud.lease``) keeps one row per lease in ``edgeflux_leases`` with
the epoch of its current term. Inside :func:`fenced`, every store transaction on
PostgreSQL first reads that row ``FOR SHARE`` and raises :class:`FencedError` (writing
nothing) if the epoch is not the context's one; the shared row lock keeps a new term
from starting while such a write is in flight, and ``idle_in_transaction_session_timeout``
bounds how long a stalled writer can hold it.

Inside :func:`guarded` (a rollout driver's step of one rollout), every such transaction
also reads the rollout's row ``FOR SHARE`` and raises :class:`StaleWriteError` if its
revision is no longer the one the step works from: an operator's pause or abort, saved
from any replica meanwhile, is never overwritten or outrun by a side effect of a step
decided before it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from cloud.store.errors import FencedError, StaleWriteError

__all__ = ["DEFAULT_LEASE_S", "TABLE", "check_fence", "fenced", "guarded"]

TABLE = "edgeflux_leases"
DEFAULT_LEASE_S = 5.0

# (lease name, epoch, lease_s) of the term the current context writes for
_FENCE: contextvars.ContextVar[tuple[str, int, float] | None] = contextvars.ContextVar(
    "edgeflux_lease_fence", default=None
)


# (rollout id, the revision its writer works from) of the step the context writes for
_GUARD: contextvars.ContextVar[tuple[str, Callable[[], int]] | None] = contextvars.ContextVar(
    "edgeflux_rollout_guard", default=None
)


@contextlib.contextmanager
def guarded(rollout_id: str, revision: Callable[[], int]) -> Iterator[None]:
    """Store writes in this context carry rollout `rollout_id`'s `revision()` (read at
    each write: the writer's own saves move it on)."""
    token = _GUARD.set((rollout_id, revision))
    try:
        yield
    finally:
        _GUARD.reset(token)


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
    epoch is not the lease's current one (:class:`FencedError`), or if the rollout it is
    guarded by moved past its revision (:class:`StaleWriteError`). Neither in the
    context: nothing to check.

    Holds the lease row and the rollout row (``FOR SHARE``) until the transaction ends,
    so a new term, or an operator's change of the rollout, begins only after this write
    committed or failed.
    """
    fence = _FENCE.get()
    if fence is not None:
        _check_epoch(conn, *fence)
    _check_guard(conn)


def _check_epoch(conn: Any, name: str, epoch: int, lease_s: float) -> None:
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


def _check_guard(conn: Any) -> None:
    guard = _GUARD.get()
    if guard is None:
        return
    rollout_id, revision = guard
    row = conn.exec_driver_sql(
        "SELECT coalesce((status->>'revision')::bigint, 0) FROM rollouts "
        "WHERE id = %(id)s FOR SHARE",
        {"id": rollout_id},
    ).first()
    current = None if row is None else int(row[0])
    if current is not None and current != revision():
        raise StaleWriteError(
            f"write refused: rollout {rollout_id!r} is at revision {current}, this step "
            f"works from revision {revision()} (it was changed meanwhile)"
        )
