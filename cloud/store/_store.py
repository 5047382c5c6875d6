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

import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from cloud.store.models import (
    AuditEntry,
    Bundle,
    Device,
    DeviceLabel,
    Event,
    RevokedCertificate,
    Rollout,
    TelemetryBatch,
    TelemetryPoint,
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

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

D = Device.__table__
L = DeviceLabel.__table__
R = RevokedCertificate.__table__
B = Bundle.__table__
RO = Rollout.__table__
TB = TelemetryBatch.__table__
T = TelemetryPoint.__table__
E = Event.__table__
A = AuditEntry.__table__


class StoreError(Exception):
    """Base of every error the store raises."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; retry later."""


class ConflictError(StoreError):
    """A uniqueness rule refused the write; nothing was written."""


class NotFoundError(StoreError):
    """The requested row does not exist."""


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_label_selector(text: str) -> dict[str, str]:
    """``"site=lab,role=arm"`` → ``{"site": "lab", "role": "arm"}`` (every pair must match)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label selector part {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    cert_fingerprint: str
    labels: dict[str, str]
    hardware_tags: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    last_seen: dt.datetime | None
    online: bool
    revoked: bool
    runtime_version: str
    active_bundle: dict[str, Any] | None
    update_state: str
    update_reason: str
    health: dict[str, Any] | None
    inventory: dict[str, Any] | None
    desired_bundle: dict[str, Any] | None
    desired_generation: int


assert {f.name for f in dataclasses.fields(DeviceRecord)} == {
    c.name for c in D.columns if c.name != "revoked_at"
}, "DeviceRecord must mirror the devices table (see _device_fast)"


@dataclass(frozen=True)
class DevicePage:
    devices: list[DeviceRecord]
    next_after: str  # "" when this is the last page
    total: int


@dataclass(frozen=True)
class BundleRecord:
    name: str
    version: str
    sequence: int
    efb_sha256: str
    size_bytes: int
    target_path: str
    policy_sha256: str = ""
    oms_root_digest: str = ""
    signer_key_id: str = ""
    published_by: str = ""
    published_at: dt.datetime = field(default_factory=_now)


@dataclass(frozen=True)
class TelemetryRecord:
    at: dt.datetime
    loop_p50_ms: float = 0.0
    loop_p99_ms: float = 0.0
    deadline_miss_rate: float = 0.0
    safety_interventions: int = 0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    temperature_c: float = 0.0
    extra: dict[str, Any] | None = None
    update_state: str = ""
    active_bundle: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventRecord:
    device_id: str
    sequence: int
    at: dt.datetime
    kind: str
    state: str = ""
    reason_code: str = ""
    detail: str = ""
    bundle: dict[str, Any] | None = None


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    bundle_name: str
    bundle_version: str
    state: str
    spec: dict[str, Any]
    status: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    created_by: str


@dataclass(frozen=True)
class AuditRecord:
    at: dt.datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None


_JSON_COLUMNS = (
    "labels",
    "hardware_tags",
    "active_bundle",
    "health",
    "inventory",
    "desired_bundle",
)
_TIME_COLUMNS = ("created_at", "updated_at", "last_seen")
# Listing thousands of devices is dominated by per-value type processing; these columns
# come back raw (SQLite: text) and are decoded below with the C json / datetime parsers.
_FAST_ORDER = (
    "id",
    "cert_fingerprint",
    "labels",
    "hardware_tags",
    "created_at",
    "updated_at",
    "last_seen",
    "online",
    "revoked",
    "runtime_version",
    "active_bundle",
    "update_state",
    "update_reason",
    "health",
    "inventory",
    "desired_bundle",
    "desired_generation",
)
_FAST_DEVICE_COLUMNS = [
    sa.type_coerce(D.c[n], sa.Text).label(n) if n in _JSON_COLUMNS + _TIME_COLUMNS else D.c[n]
    for n in _FAST_ORDER
]


@functools.lru_cache(maxsize=8192)
def _json_cached(text: str) -> Any:
    return json.loads(text)


def _json_value(value: Any) -> Any:
    """Decode a flat JSON column (labels, tags, bundle refs, health).

    Fleets repeat the same small documents (labels, bundle refs) thousands of times, so
    each distinct text is parsed once and every record gets its own shallow copy.
    """
    if not isinstance(value, str):
        return value
    out = _json_cached(value) if len(value) <= 1024 else json.loads(value)
    if isinstance(out, dict):
        if any(isinstance(v, (dict, list)) for v in out.values()):
            return json.loads(value)  # nested: a shallow copy would share the cached parts
        return dict(out)
    if isinstance(out, list):
        if any(isinstance(v, (dict, list)) for v in out):
            return json.loads(value)
        return list(out)
    return out


def _time_value(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value  # type: ignore[no-any-return]


# Built once: the per-call hot path (every device RPC) then skips statement construction.
_GET_DEVICE = sa.select(*_FAST_DEVICE_COLUMNS).where(D.c.id == sa.bindparam("device_id"))
_IS_REVOKED = sa.select(R.c.fingerprint).where(R.c.fingerprint == sa.bindparam("fp"))


def _device_fast(row: Any) -> DeviceRecord:
    (
        id_,
        fp,
        labels,
        tags,
        created,
        updated,
        seen,
        online,
        revoked,
        runtime_version,
        active,
        update_state,
        update_reason,
        health,
        inventory,
        desired,
        generation,
    ) = row
    # A frozen dataclass's __init__ sets each field through object.__setattr__, which
    # dominates listing 10,000 devices; filling __dict__ at once yields the same object.
    rec = object.__new__(DeviceRecord)
    rec.__dict__.update(
        id=id_,
        cert_fingerprint=fp,
        labels=_json_value(labels) or {},
        hardware_tags=_json_value(tags) or [],
        created_at=_time_value(created),
        updated_at=_time_value(updated),
        last_seen=_time_value(seen) if seen is not None else None,
        online=bool(online),
        revoked=bool(revoked),
        runtime_version=runtime_version,
        active_bundle=_json_value(active) if active is not None else None,
        update_state=update_state,
        update_reason=update_reason,
        health=_json_value(health) if health is not None else None,
        inventory=json.loads(inventory) if isinstance(inventory, str) else inventory,
        desired_bundle=_json_value(desired) if desired is not None else None,
        desired_generation=int(generation),
    )
    return rec


def _bundle(row: Any) -> BundleRecord:
    m = row._mapping
    return BundleRecord(
        name=m["name"],
        version=m["version"],
        sequence=int(m["sequence"]),
        efb_sha256=m["efb_sha256"],
        size_bytes=int(m["size_bytes"]),
        target_path=m["target_path"],
        policy_sha256=m["policy_sha256"],
        oms_root_digest=m["oms_root_digest"],
        signer_key_id=m["signer_key_id"],
        published_by=m["published_by"],
        published_at=_utc(m["published_at"]),  # type: ignore[arg-type]
    )


def _rollout(row: Any) -> RolloutRecord:
    m = row._mapping
    return RolloutRecord(
        id=m["id"],
        bundle_name=m["bundle_name"],
        bundle_version=m["bundle_version"],
        state=m["state"],
        spec=dict(m["spec"]),
        status=dict(m["status"]),
        created_at=_utc(m["created_at"]),  # type: ignore[arg-type]
        updated_at=_utc(m["updated_at"]),  # type: ignore[arg-type]
        created_by=m["created_by"],
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across app crashes
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """The control plane's database. Open with :meth:`open` (runs migrations)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        # SQLite hot-path reads (per-call auth) skip SQLAlchemy: one raw read-only
        # connection per thread, statements compiled once from the Core ones.
        self._raw = threading.local()
        self._raw_conns: list[sqlite3.Connection] = []
        self._raw_sql: dict[str, str] = {}
        if engine.url.get_backend_name() == "sqlite":
            for name, stmt in (("device", _GET_DEVICE), ("revoked", _IS_REVOKED)):
                self._raw_sql[name] = str(stmt.compile(dialect=engine.dialect))

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, url: str, *, migrate: bool = True, pool_size: int = 8) -> Store:
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
        with self._lock:
            conns, self._raw_conns = self._raw_conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self.engine.dispose()

    def _raw_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._raw, "conn", None)
        if conn is None:
            uri = Path(self.engine.url.database or "").resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
            with self._lock:
                self._raw_conns.append(conn)
            self._raw.conn = conn
        return conn

    def _raw_read(self, name: str, params: tuple[Any, ...]) -> Any:
        """One row of a precompiled read on this thread's raw SQLite connection."""
        try:
            # fetchall, not fetchone: a statement left mid-step would keep this
            # connection's read snapshot open, and later reads would miss new commits.
            rows = self._raw_conn().execute(self._raw_sql[name], params).fetchall()
            return rows[0] if rows else None
        except sqlite3.Error as e:
            raise StoreUnavailable(f"database {self.url} is unavailable: {e}") from e

    def _raw_all(self, stmt: Any) -> list[Any]:
        """All rows of a Core SELECT, compiled for SQLite and run on the raw connection."""
        compiled = stmt.compile(dialect=self.engine.dialect)
        params = [compiled.params[k] for k in compiled.positiontup or ()]
        try:
            return self._raw_conn().execute(str(compiled), params).fetchall()
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

    # ---------------------------------------------------------------- devices
    def add_device(
        self,
        device_id: str,
        cert_fingerprint: str,
        labels: Mapping[str, str] | None = None,
        hardware_tags: Sequence[str] = (),
    ) -> DeviceRecord:
        """Register a device; ConflictError if the id exists (revoked ids stay taken)."""
        now = _now()
        labels = dict(labels or {})
        try:
            with self._tx() as conn:
                conn.execute(
                    D.insert().values(
                        id=device_id,
                        cert_fingerprint=cert_fingerprint,
                        labels=labels,
                        hardware_tags=list(hardware_tags),
                        created_at=now,
                        updated_at=now,
                        online=False,
                        revoked=False,
                        runtime_version="",
                        update_state="",
                        update_reason="",
                        desired_generation=0,
                    )
                )
                if labels:
                    conn.execute(
                        L.insert(),
                        [{"device_id": device_id, "key": k, "value": v} for k, v in labels.items()],
                    )
        except ConflictError as e:
            raise ConflictError(f"device {device_id!r} already exists") from e
        self._notify([device_id])
        return self.require_device(device_id)

    def add_devices_bulk(self, rows: Sequence[tuple[str, str, Mapping[str, str]]]) -> None:
        """Insert many (id, fingerprint, labels) at once (fleet import, benchmarks)."""
        now = _now()
        with self._tx() as conn:
            conn.execute(
                D.insert(),
                [
                    {
                        "id": i,
                        "cert_fingerprint": fp,
                        "labels": dict(lb),
                        "hardware_tags": [],
                        "created_at": now,
                        "updated_at": now,
                        "online": False,
                        "revoked": False,
                        "runtime_version": "",
                        "update_state": "",
                        "update_reason": "",
                        "desired_generation": 0,
                    }
                    for i, fp, lb in rows
                ],
            )
            labels = [
                {"device_id": i, "key": k, "value": v} for i, _, lb in rows for k, v in lb.items()
            ]
            if labels:
                conn.execute(L.insert(), labels)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        if self._raw_sql:
            row = self._raw_read("device", (device_id,))
        else:
            with self._connect() as conn:
                row = conn.execute(_GET_DEVICE, {"device_id": device_id}).first()
        return _device_fast(row) if row else None

    def require_device(self, device_id: str) -> DeviceRecord:
        rec = self.get_device(device_id)
        if rec is None:
            raise NotFoundError(f"no device {device_id!r}")
        return rec

    def device_credentials(self, device_id: str) -> tuple[str, bool] | None:
        """(certificate fingerprint, revoked) for an id, or None: the per-call auth check."""
        with self._connect() as conn:
            row = conn.execute(
                sa.select(D.c.cert_fingerprint, D.c.revoked).where(D.c.id == device_id)
            ).first()
        return (row[0], bool(row[1])) if row else None

    def _device_filter(self, selector: Mapping[str, str] | None, text: str | None) -> list[Any]:
        conds: list[Any] = []
        for key, value in (selector or {}).items():
            conds.append(
                sa.exists().where(L.c.device_id == D.c.id, L.c.key == key, L.c.value == value)
            )
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(D.c.id.like(f"%{escaped}%", escape="\\"))
        return conds

    def list_devices(
        self,
        selector: Mapping[str, str] | None = None,
        *,
        text: str | None = None,
        limit: int = 100,
        after: str = "",
        with_total: bool = True,
    ) -> DevicePage:
        """Devices matching every label in `selector` (and `text` in the id), ordered by id.

        Keyset pagination: pass the previous page's ``next_after`` as `after`.
        """
        limit = max(1, min(limit, 10_000))
        conds = self._device_filter(selector, text)
        query = sa.select(*_FAST_DEVICE_COLUMNS).where(*conds)
        if after:
            query = query.where(D.c.id > after)
        query = query.order_by(D.c.id).limit(limit + 1)
        count = sa.select(sa.func.count()).select_from(D).where(*conds)
        if self._raw_sql:  # SQLite: skip SQLAlchemy's per-row result machinery
            rows = self._raw_all(query)
            if not with_total:
                total = -1
            elif not after and len(rows) <= limit:
                total = len(rows)  # the first page holds every match: no count query
            else:
                total = int(self._raw_all(count)[0][0])
        else:
            with self._connect() as conn:
                rows = conn.execute(query).fetchall()
                if not with_total:
                    total = -1
                elif not after and len(rows) <= limit:
                    total = len(rows)
                else:
                    total = int(conn.execute(count).scalar_one())
        devices = [_device_fast(r) for r in rows[:limit]]
        next_after = devices[-1].id if len(rows) > limit else ""
        return DevicePage(devices, next_after, total)

    def devices_changed_since(self, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """(id, updated_at) of devices whose visible state changed after `since`.

        Any process may write the store (ingest, CLI, other replicas); the server polls
        this to feed WatchFleet. Presence heartbeats (`touch`) do not count as changes.
        """
        q = sa.select(D.c.id, D.c.updated_at).where(D.c.updated_at > since)
        with self._connect() as conn:
            rows = conn.execute(q.order_by(D.c.updated_at)).fetchall()
        return [(r[0], _utc(r[1])) for r in rows]  # type: ignore[misc]

    def revoke_device(self, device_id: str, actor: str = "") -> DeviceRecord:
        """Mark the device revoked and its certificate fingerprint refused; idempotent."""
        now = _now()
        with self._tx() as conn:
            row = conn.execute(
                sa.select(D.c.cert_fingerprint, D.c.revoked).where(D.c.id == device_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no device {device_id!r}")
            conn.execute(
                D.update()
                .where(D.c.id == device_id)
                .values(revoked=True, revoked_at=now, online=False, updated_at=now)
            )
            exists = conn.execute(R.select().where(R.c.fingerprint == row[0])).first()
            if exists is None:
                conn.execute(
                    R.insert().values(
                        fingerprint=row[0], subject=f"device:{device_id}", revoked_at=now
                    )
                )
            self._audit(conn, actor, "device.revoke", device_id, None)
        self._notify([device_id])
        return self.require_device(device_id)

    def revoke_certificate(self, fingerprint: str, subject: str, actor: str = "") -> None:
        with self._tx() as conn:
            if conn.execute(R.select().where(R.c.fingerprint == fingerprint)).first() is None:
                conn.execute(
                    R.insert().values(fingerprint=fingerprint, subject=subject, revoked_at=_now())
                )
            self._audit(conn, actor, "certificate.revoke", subject, {"fingerprint": fingerprint})

    def revoked_fingerprints(self) -> set[str]:
        with self._connect() as conn:
            return {r[0] for r in conn.execute(sa.select(R.c.fingerprint)).fetchall()}

    def is_revoked(self, fingerprint: str) -> bool:
        if self._raw_sql:
            return self._raw_read("revoked", (fingerprint,)) is not None
        with self._connect() as conn:
            return conn.execute(_IS_REVOKED, {"fp": fingerprint}).first() is not None

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> DeviceRecord:
        with self._tx() as conn:
            n = conn.execute(
                D.update().where(D.c.id == device_id).values(labels=dict(labels), updated_at=_now())
            ).rowcount
            if n == 0:
                raise NotFoundError(f"no device {device_id!r}")
            conn.execute(L.delete().where(L.c.device_id == device_id))
            if labels:
                conn.execute(
                    L.insert(),
                    [{"device_id": device_id, "key": k, "value": v} for k, v in labels.items()],
                )
        self._notify([device_id])
        return self.require_device(device_id)

    def set_online(
        self,
        device_id: str,
        online: bool,
        at: dt.datetime | None = None,
        runtime_version: str | None = None,
    ) -> bool:
        """Record presence (from the retained MQTT state topic); False for an unknown device."""
        at = at or _now()
        values: dict[str, Any] = {"online": online, "last_seen": at, "updated_at": _now()}
        if runtime_version:
            values["runtime_version"] = runtime_version
        with self._tx() as conn:
            n = conn.execute(D.update().where(D.c.id == device_id).values(**values)).rowcount
        if n:
            self._notify([device_id])
        return bool(n)

    def touch(self, device_id: str, at: dt.datetime | None = None) -> bool:
        """Update last seen (any authenticated call or message); False for an unknown device."""
        at = at or _now()
        with self._tx() as conn:
            n = conn.execute(D.update().where(D.c.id == device_id).values(last_seen=at)).rowcount
        return bool(n)

    def record_inventory(self, device_id: str, inventory: Mapping[str, Any]) -> DeviceRecord:
        """Store what the device reports it has (runtime, hardware, active bundle, ...)."""
        now = _now()
        values: dict[str, Any] = {
            "inventory": dict(inventory),
            "last_seen": now,
            "updated_at": now,
        }
        if "runtime_version" in inventory:
            values["runtime_version"] = str(inventory["runtime_version"])
        if "hardware_tags" in inventory:
            values["hardware_tags"] = list(inventory["hardware_tags"])
        if inventory.get("active_bundle"):
            values["active_bundle"] = dict(inventory["active_bundle"])
        with self._tx() as conn:
            n = conn.execute(D.update().where(D.c.id == device_id).values(**values)).rowcount
            if n == 0:
                raise NotFoundError(f"no device {device_id!r}")
        self._notify([device_id])
        return self.require_device(device_id)

    # ---------------------------------------------------------------- desired state
    def set_desired(
        self, device_ids: Sequence[str], bundle: Mapping[str, Any] | None, actor: str = ""
    ) -> dict[str, int]:
        """Point devices at a bundle ({name, version, sequence, ...}); bumps each generation.

        Returns the new generation per device. NotFoundError if any id is unknown
        (nothing is changed then).
        """
        result: dict[str, int] = {}
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(D.c.id, D.c.desired_generation).where(D.c.id.in_(list(device_ids)))
            ).fetchall()
            found = {r[0]: int(r[1]) for r in rows}
            missing = sorted(set(device_ids) - set(found))
            if missing:
                raise NotFoundError(f"no such devices: {', '.join(missing[:10])}")
            now = _now()
            for device_id, gen in found.items():
                conn.execute(
                    D.update()
                    .where(D.c.id == device_id)
                    .values(
                        desired_bundle=dict(bundle) if bundle else None,
                        desired_generation=gen + 1,
                        updated_at=now,
                    )
                )
                result[device_id] = gen + 1
            self._audit(
                conn,
                actor,
                "device.set_desired",
                ",".join(sorted(found))[:256],
                {"bundle": dict(bundle) if bundle else None},
            )
        self._notify(result)
        return result

    # ---------------------------------------------------------------- telemetry & events
    def record_telemetry(
        self,
        device_id: str,
        sequence: int,
        points: Sequence[TelemetryRecord],
        received_at: dt.datetime | None = None,
    ) -> bool:
        """Store one MQTT telemetry batch exactly once per (device, sequence).

        Returns False (and writes nothing) for a batch already stored (QoS 1 redelivery)
        and for a device that is not registered or was revoked. Also updates the device's
        last seen, health summary and, if reported, its active bundle and update state.
        """
        received_at = received_at or _now()
        try:
            with self._tx() as conn:
                if not self._accepts_data(conn, device_id):
                    return False
                conn.execute(
                    TB.insert().values(
                        device_id=device_id, sequence=sequence, received_at=received_at
                    )
                )
                if points:
                    conn.execute(
                        T.insert(),
                        [
                            {
                                "device_id": device_id,
                                "at": p.at,
                                "sequence": sequence,
                                "loop_p50_ms": p.loop_p50_ms,
                                "loop_p99_ms": p.loop_p99_ms,
                                "deadline_miss_rate": p.deadline_miss_rate,
                                "safety_interventions": p.safety_interventions,
                                "cpu_percent": p.cpu_percent,
                                "memory_percent": p.memory_percent,
                                "temperature_c": p.temperature_c,
                                "extra": p.extra,
                            }
                            for p in points
                        ],
                    )
                values: dict[str, Any] = {"last_seen": received_at, "updated_at": _now()}
                last = max(points, key=lambda p: p.at) if points else None
                current = conn.execute(sa.select(D.c.health).where(D.c.id == device_id)).scalar()
                # Batches can arrive out of order (spool replay): health is the newest point.
                if last is not None and not (
                    current and str(current.get("at", "")) > last.at.isoformat()
                ):
                    values["health"] = {
                        "at": last.at.isoformat(),
                        "loop_p50_ms": last.loop_p50_ms,
                        "loop_p99_ms": last.loop_p99_ms,
                        "deadline_miss_rate": last.deadline_miss_rate,
                        "safety_interventions": last.safety_interventions,
                        "cpu_percent": last.cpu_percent,
                        "memory_percent": last.memory_percent,
                        "temperature_c": last.temperature_c,
                    }
                    if last.update_state:
                        values["update_state"] = last.update_state
                    if last.active_bundle:
                        values["active_bundle"] = dict(last.active_bundle)
                conn.execute(D.update().where(D.c.id == device_id).values(**values))
        except ConflictError:
            return False
        self._notify([device_id])
        return True

    @staticmethod
    def _accepts_data(conn: Connection, device_id: str) -> bool:
        revoked = conn.execute(sa.select(D.c.revoked).where(D.c.id == device_id)).scalar()
        return revoked is not None and not revoked

    def record_event(self, ev: EventRecord) -> bool:
        """Store an event once per (device, sequence); update events move the device's state.

        False (nothing written) for a duplicate, or a device unknown or revoked.
        """
        try:
            with self._tx() as conn:
                if not self._accepts_data(conn, ev.device_id):
                    return False
                conn.execute(
                    E.insert().values(
                        device_id=ev.device_id,
                        sequence=ev.sequence,
                        at=ev.at,
                        kind=ev.kind,
                        state=ev.state,
                        reason_code=ev.reason_code,
                        detail=ev.detail,
                        bundle=ev.bundle,
                    )
                )
                if ev.kind == "update" and ev.state:
                    conn.execute(
                        D.update()
                        .where(D.c.id == ev.device_id)
                        .values(
                            update_state=ev.state,
                            update_reason=ev.reason_code,
                            last_seen=_now(),
                            updated_at=_now(),
                        )
                    )
        except ConflictError:
            return False
        self._notify([ev.device_id])
        return True

    def telemetry(
        self, device_id: str, *, limit: int = 500, since: dt.datetime | None = None
    ) -> list[TelemetryRecord]:
        """The newest `limit` points of a device, returned oldest first."""
        q = T.select().where(T.c.device_id == device_id)
        if since is not None:
            q = q.where(T.c.at >= since)
        q = q.order_by(T.c.at.desc(), T.c.id.desc()).limit(limit)
        with self._connect() as conn:
            rows = conn.execute(q).fetchall()
        out = []
        for r in reversed(rows):
            m = r._mapping
            out.append(
                TelemetryRecord(
                    at=_utc(m["at"]),  # type: ignore[arg-type]
                    loop_p50_ms=m["loop_p50_ms"],
                    loop_p99_ms=m["loop_p99_ms"],
                    deadline_miss_rate=m["deadline_miss_rate"],
                    safety_interventions=int(m["safety_interventions"]),
                    cpu_percent=m["cpu_percent"],
                    memory_percent=m["memory_percent"],
                    temperature_c=m["temperature_c"],
                    extra=m["extra"],
                )
            )
        return out

    def events(
        self, device_id: str | None = None, *, kind: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        """The newest `limit` events (of one device and/or kind), returned oldest first."""
        q = E.select()
        if device_id is not None:
            q = q.where(E.c.device_id == device_id)
        if kind is not None:
            q = q.where(E.c.kind == kind)
        q = q.order_by(E.c.at.desc(), E.c.id.desc()).limit(limit)
        with self._connect() as conn:
            rows = conn.execute(q).fetchall()
        return [
            EventRecord(
                device_id=m["device_id"],
                sequence=int(m["sequence"]),
                at=_utc(m["at"]),  # type: ignore[arg-type]
                kind=m["kind"],
                state=m["state"],
                reason_code=m["reason_code"],
                detail=m["detail"],
                bundle=m["bundle"],
            )
            for m in (r._mapping for r in reversed(rows))
        ]

    def prune_telemetry(self, older_than: dt.datetime) -> int:
        """Retention: delete telemetry points and batch markers older than `older_than`."""
        with self._tx() as conn:
            n = conn.execute(T.delete().where(T.c.at < older_than)).rowcount
            conn.execute(TB.delete().where(TB.c.received_at < older_than))
        return int(n)

    # ---------------------------------------------------------------- bundles
    def add_bundle(self, rec: BundleRecord) -> BundleRecord:
        """Record a published bundle; ConflictError if the version or sequence is taken."""
        try:
            with self._tx() as conn:
                conn.execute(
                    B.insert().values(
                        name=rec.name,
                        version=rec.version,
                        sequence=rec.sequence,
                        policy_sha256=rec.policy_sha256,
                        oms_root_digest=rec.oms_root_digest,
                        efb_sha256=rec.efb_sha256,
                        size_bytes=rec.size_bytes,
                        signer_key_id=rec.signer_key_id,
                        target_path=rec.target_path,
                        published_at=rec.published_at,
                        published_by=rec.published_by,
                    )
                )
                self._audit(
                    conn,
                    rec.published_by,
                    "bundle.publish",
                    f"{rec.name}@{rec.version}",
                    {"sequence": rec.sequence, "sha256": rec.efb_sha256},
                )
        except ConflictError as e:
            raise ConflictError(
                f"bundle {rec.name} {rec.version} (sequence {rec.sequence}) conflicts with a "
                f"published bundle: {e}"
            ) from e
        return rec

    def delete_bundle(self, name: str, version: str) -> None:
        """Undo `add_bundle` (only used when publishing fails after the row was claimed)."""
        with self._tx() as conn:
            conn.execute(B.delete().where(B.c.name == name, B.c.version == version))

    def get_bundle(self, name: str, version: str) -> BundleRecord | None:
        with self._connect() as conn:
            row = conn.execute(B.select().where(B.c.name == name, B.c.version == version)).first()
        return _bundle(row) if row else None

    def latest_bundle(self, name: str) -> BundleRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                B.select().where(B.c.name == name).order_by(B.c.sequence.desc()).limit(1)
            ).first()
        return _bundle(row) if row else None

    def list_bundles(
        self, name: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[BundleRecord]:
        """Newest first (by publish time, then sequence)."""
        q = B.select()
        if name:
            q = q.where(B.c.name == name)
        q = q.order_by(B.c.published_at.desc(), B.c.sequence.desc()).limit(limit).offset(offset)
        with self._connect() as conn:
            return [_bundle(r) for r in conn.execute(q).fetchall()]

    def count_bundles(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(B)).scalar_one())

    # ---------------------------------------------------------------- rollouts
    def put_rollout(self, rec: RolloutRecord) -> None:
        """Insert or replace a rollout (the rollout engine owns its spec/status JSON)."""
        values = {
            "bundle_name": rec.bundle_name,
            "bundle_version": rec.bundle_version,
            "state": rec.state,
            "spec": rec.spec,
            "status": rec.status,
            "updated_at": rec.updated_at,
            "created_by": rec.created_by,
        }
        with self._tx() as conn:
            n = conn.execute(RO.update().where(RO.c.id == rec.id).values(**values)).rowcount
            if n == 0:
                conn.execute(RO.insert().values(id=rec.id, created_at=rec.created_at, **values))

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        with self._connect() as conn:
            row = conn.execute(RO.select().where(RO.c.id == rollout_id)).first()
        return _rollout(row) if row else None

    def list_rollouts(self, *, limit: int = 100, offset: int = 0) -> list[RolloutRecord]:
        q = RO.select().order_by(RO.c.created_at.desc()).limit(limit).offset(offset)
        with self._connect() as conn:
            return [_rollout(r) for r in conn.execute(q).fetchall()]

    # ---------------------------------------------------------------- audit
    @staticmethod
    def _audit(
        conn: Connection, actor: str, action: str, target: str, detail: dict[str, Any] | None
    ) -> None:
        conn.execute(
            A.insert().values(
                at=_now(), actor=actor or "local", action=action, target=target, detail=detail
            )
        )

    def audit(
        self, actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None
    ) -> None:
        with self._tx() as conn:
            self._audit(conn, actor, action, target, detail)

    def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        """Newest first."""
        with self._connect() as conn:
            rows = conn.execute(A.select().order_by(A.c.id.desc()).limit(limit)).fetchall()
        return [
            AuditRecord(
                at=_utc(m["at"]),  # type: ignore[arg-type]
                actor=m["actor"],
                action=m["action"],
                target=m["target"],
                detail=m["detail"],
            )
            for m in (r._mapping for r in rows)
        ]
