"""The control-plane store: SQLAlchemy 2 models, alembic migrations, and the `Store` API.

The only package that imports SQLAlchemy (tests/test_layering.py). SQLite (WAL) by
default, PostgreSQL by URL; both run the same migrations (``alembic upgrade heads``).
One module per aggregate: ``devices``, ``updates`` (desired state and update events),
``telemetry``, ``bundles``, ``rollouts``, ``audit``, ``attestations``, ``budgets``;
:class:`Store` composes the first six over one engine (``_base``). Features add
their own tables as alembic branches off revision ``0001`` and their own modules here.
"""

from cloud.store._device_rows import DevicePage, DeviceRecord
from cloud.store._store import Store
from cloud.store.audit import AuditRecord
from cloud.store.bundles import BundleRecord
from cloud.store.devices import parse_label_selector
from cloud.store.errors import (
    ConflictError,
    FencedError,
    NotFoundError,
    StaleWriteError,
    StoreError,
    StoreUnavailable,
)
from cloud.store.rollouts import RolloutRecord
from cloud.store.telemetry import TelemetryRecord
from cloud.store.updates import EventRecord

__all__ = [
    "AuditRecord",
    "BundleRecord",
    "ConflictError",
    "DevicePage",
    "DeviceRecord",
    "EventRecord",
    "FencedError",
    "NotFoundError",
    "RolloutRecord",
    "StaleWriteError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TelemetryRecord",
    "parse_label_selector",
]
