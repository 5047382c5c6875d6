"""The store's engine: connections, transactions, migrations and the change feed.

Every aggregate's queries (`cloud.store.devices`, `.bundles`, ...) build on
:class:`StoreBase`; `cloud.store.Store` composes them into one object.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from cloud.store._device_rows import HOT_READS
from cloud.store.errors import ConflictError, StoreError, StoreUnavailable
from cloud.store.fence import check_fence
from cloud.store.models import AuditEntry, Device, table

__all__ = ["StoreBase", "as_utc", "utcnow"]

log = logging.getLogger("cloud.store")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

devices_t = table(Device)
audit_t = table(AuditEntry)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across app crashes
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class StoreBase:
    """The database connection every aggregate's queries share."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        # SQLite hot-path reads (per-call auth) skip SQLAlchemy: one raw read-only
        # connection per thread, statements compiled once from the Core ones.
        self._raw = threading.local()
        self._raw_conns: list[tuple[sqlite3.Connection, threading.Lock]] = []
        self._raw_closed = False
        self._raw_sql: dict[str, str] = {}
        if engine.url.get_backend_name() == "sqlite":
            for name, stmt in HOT_READS.items():
                self._raw_sql[name] = str(stmt.compile(dialect=engine.dialect))

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, url: str, *, migrate: bool = True, pool_size: int = 8) -> Self:
        """Connect to `url` (``sqlite:///path`` or ``postgresql+psycopg://...``) and migrate.

        Raises StoreUnavailable naming the (password-less) URL if the database is down.
        """
        parsed = sa.make_url(url)
        # A networked database can restart under us: ping pooled connections before use.
        # A SQLite file cannot, and the ping would double the cost of every small read.
        kwargs: dict[str, Any] = {"pool_pre_ping": parsed.get_backend_name() != "sqlite"}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
            kwargs["pool_size"] = pool_size
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["connect_args"] = {"connect_timeout": 5}
        engine = sa.create_engine(parsed, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        try:
            if migrate:
                store.migrate()
            else:
                store.ping()
        except StoreError:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        # Each raw connection is closed under its own lock: closing one while
        # another thread (a plane's driver pass still finishing) runs a statement
        # on it crashes the interpreter inside SQLite.
        with self._lock:
            self._raw_closed = True
            conns, self._raw_conns = self._raw_conns, []
        for conn, lock in conns:
            with lock, contextlib.suppress(sqlite3.Error):
                conn.close()
        self.engine.dispose()

    def _raw_execute(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """All rows of `sql` on this thread's raw read-only SQLite connection."""
        pair: tuple[sqlite3.Connection, threading.Lock] | None = getattr(self._raw, "conn", None)
        if pair is None:
            uri = Path(self.engine.url.database or "").resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
            pair = (conn, threading.Lock())
            with self._lock:
                if self._raw_closed:
                    conn.close()
                    raise sqlite3.ProgrammingError("the store is closed")
                self._raw_conns.append(pair)
            self._raw.conn = pair
        conn, lock = pair
        with lock:
            if self._raw_closed:
                raise sqlite3.ProgrammingError("the store is closed")
            # fetchall, not fetchone: a statement left mid-step would keep this
            # connection's read snapshot open, and later reads would miss new commits.
            return conn.execute(sql, params).fetchall()

    def _raw_read(self, name: str, params: tuple[Any, ...]) -> Any:
        """One row of a precompiled read on this thread's raw SQLite connection."""
        try:
            rows = self._raw_execute(self._raw_sql[name], params)
            return rows[0] if rows else None
        except sqlite3.Error as e:
            raise StoreUnavailable(f"database {self.url} is unavailable: {e}") from e

    def _raw_all(self, stmt: sa.Select[Any]) -> list[Any]:
        """All rows of a Core SELECT, compiled for SQLite and run on the raw connection."""
        compiled = stmt.compile(dialect=self.engine.dialect)
        params = [compiled.params[k] for k in compiled.positiontup or ()]
        try:
            return self._raw_execute(str(compiled), params)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"database {self.url} is unavailable: {e}") from e

    @property
    def is_sqlite(self) -> bool:
        return self.engine.url.get_backend_name() == "sqlite"

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Bring the schema to every head (other packages add branches off ``0001``)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        # Several processes may open a fresh database at once (replicas, CLI + server):
        # one migrates, the others wait and then find nothing to do.
        with self._migration_lock(), self._connect() as conn:
            if self.engine.url.get_backend_name() == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7242025)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
            conn.commit()

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        database = self.engine.url.database
        if not self.is_sqlite or not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise StoreUnavailable(f"database {self.url} is unavailable: {e.orig}") from e
        except exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"database {self.url} connection lost: {e.orig}") from e
            raise

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    check_fence(conn)  # a rollout driver's write carries its lease's epoch
                yield conn
        except exc.IntegrityError as e:
            raise ConflictError(str(e.orig).splitlines()[0]) from e
        except (exc.OperationalError, exc.InterfaceError) as e:
            if "database is locked" in str(e.orig):
                # SQLite's writer lock outlasted busy_timeout: transient, so retryable.
                raise StoreUnavailable(f"database {self.url} is busy: {e.orig}") from e
            raise StoreUnavailable(f"database {self.url} is unavailable: {e.orig}") from e
        except exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"database {self.url} connection lost: {e.orig}") from e
            raise

    # ---------------------------------------------------------------- change feed
    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(device_id)` after each committed device change; returns unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, device_ids: Iterable[str]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for device_id in device_ids:
            for listener in listeners:
                try:
                    listener(device_id)
                except Exception:  # a broken watcher must not break a write
                    log.exception("store listener failed for device %s", device_id)

    @staticmethod
    def _accepts_data(conn: Connection, device_id: str) -> bool:
        revoked = conn.execute(
            sa.select(devices_t.c.revoked).where(devices_t.c.id == device_id)
        ).scalar()
        return revoked is not None and not revoked

    # ---------------------------------------------------------------- audit
    @staticmethod
    def _audit(
        conn: Connection, actor: str, action: str, target: str, detail: dict[str, Any] | None
    ) -> None:
        conn.execute(
            audit_t.insert().values(
                at=utcnow(), actor=actor or "local", action=action, target=target, detail=detail
            )
        )
