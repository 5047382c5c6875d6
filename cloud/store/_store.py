"""The `Store`: every read and write the control plane makes to its database.

Callers see plain dataclasses and the store's own errors, never SQLAlchemy objects:

- :class:`StoreUnavailable` — the database cannot be reached (the gRPC layer maps it
  to UNAVAILABLE; the store recovers by itself when the database returns, since the
  pool pings connections before use).
- :class:`ConflictError` — a uniqueness rule refused the write (e.g. a bundle version
  that already exists); nothing was written.
- :class:`NotFoundError` — the named row does not exist.

The API is synchronous (SQLAlchemy 2 Core over a pooled engine); the async server
calls it through ``asyncio.to_thread``. Listeners registered with :meth:`subscribe`
hear the id of every device whose visible state changed, after the commit.
"""

from __future__ import annotations

from cloud.store.audit import AuditQueries
from cloud.store.bundles import BundleQueries
from cloud.store.devices import DeviceQueries
from cloud.store.rollouts import RolloutQueries
from cloud.store.telemetry import TelemetryQueries, TelemetryRecord
from cloud.store.updates import UpdateQueries

__all__ = ["Store", "TelemetryRecord"]


class Store(
    DeviceQueries, UpdateQueries, TelemetryQueries, BundleQueries, RolloutQueries, AuditQueries
):
    """The control plane's database. Open with :meth:`open` (runs migrations).

    One object with every aggregate's queries: devices (`cloud.store.devices`),
    updates (`.updates`), telemetry (`.telemetry`), bundles (`.bundles`), rollouts
    (`.rollouts`) and the audit log (`.audit`), over one engine (`._base`).
    """
