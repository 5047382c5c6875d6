"""Maintenance windows (table ``maintenance_windows``): which devices may switch when.

Each row is one named :class:`~runtime.maintenance_window.MaintenanceWindow` and the
label selector of the devices it applies to (every label must match, as in
``list_devices``). A device under several windows switches only while all of them
are open. Migration: ``windows_0001`` (alembic branch ``windows`` off ``0001``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from cloud.store.errors import NotFoundError, StoreUnavailable
from runtime.maintenance_window import MaintenanceWindow

__all__ = ["LabeledWindow", "WindowStore"]

_md = sa.MetaData()
windows_t = sa.Table(
    "maintenance_windows",
    _md,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("selector", sa.Text(), nullable=False),
    sa.Column("window", sa.Text(), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class LabeledWindow:
    """A window and the labels a device must carry for it to apply."""

    window: MaintenanceWindow
    selector: dict[str, str]
    actor: str = ""
    updated_at: dt.datetime | None = None

    def applies_to(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())


class WindowStore:
    """Maintenance windows over a store engine (the store's migrations create the table)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def _conn(self, write: bool = False) -> Iterator[Connection]:
        try:
            ctx = self.engine.begin() if write else self.engine.connect()
            with ctx as conn:
                yield conn
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise StoreUnavailable(f"database {self.engine.url!r} is unavailable: {e.orig}") from e

    def put(self, window: MaintenanceWindow, selector: Mapping[str, str], actor: str) -> None:
        """Create or replace the window named ``window.name``."""
        if not selector:
            raise ValueError("a window needs a label selector (--label key=value)")
        row = {
            "selector": json.dumps(dict(selector), sort_keys=True),
            "window": json.dumps(window.to_dict(), sort_keys=True),
            "actor": actor[:200],
            "updated_at": dt.datetime.now(dt.UTC),
        }
        t = windows_t
        with self._conn(write=True) as conn:
            done = conn.execute(t.update().where(t.c.name == window.name).values(**row))
            if done.rowcount == 0:
                conn.execute(t.insert().values(name=window.name, **row))

    def remove(self, name: str) -> None:
        with self._conn(write=True) as conn:
            done = conn.execute(windows_t.delete().where(windows_t.c.name == name))
        if done.rowcount == 0:
            raise NotFoundError(f"no maintenance window {name!r}")

    def get(self, name: str) -> LabeledWindow | None:
        return next((w for w in self.all() if w.window.name == name), None)

    def all(self) -> list[LabeledWindow]:
        """Every window, by name."""
        with self._conn() as conn:
            rows = conn.execute(sa.select(windows_t).order_by(windows_t.c.name)).fetchall()
        out = []
        for r in rows:
            at = r.updated_at
            out.append(
                LabeledWindow(
                    window=MaintenanceWindow.model_validate(json.loads(r.window)),
                    selector=dict(json.loads(r.selector)),
                    actor=r.actor,
                    updated_at=at if at is None or at.tzinfo else at.replace(tzinfo=dt.UTC),
                )
            )
        return out
