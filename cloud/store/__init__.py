"""The control-plane store: SQLAlchemy 2 models, alembic migrations, and the `Store` API.

The only package that imports SQLAlchemy (tests/test_layering.py). SQLite (WAL) by
default, PostgreSQL by URL; both run the same migrations (``alembic upgrade heads``).
Other packages add their own tables as alembic branches off revision ``0001`` and
their own modules here (e.g. ``cloud/store/budgets.py``).
"""

from cloud.store._store import (
    AuditRecord,
    BundleRecord,
    ConflictError,
    DevicePage,
    DeviceRecord,
    EventRecord,
    NotFoundError,
    RolloutRecord,
    Store,
    StoreError,
    StoreUnavailable,
    TelemetryRecord,
    parse_label_selector,
)

__all__ = [
    "AuditRecord",
    "BundleRecord",
    "ConflictError",
    "DevicePage",
    "DeviceRecord",
    "EventRecord",
    "NotFoundError",
    "RolloutRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TelemetryRecord",
    "parse_label_selector",
]
