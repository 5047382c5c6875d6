"""A leader lease on PostgreSQL: one plane replica at a time runs a singleton.

Several plane replicas on one PostgreSQL database elect the driver of each singleton
(the rollout engine, ...) with a session-level advisory lock: the replica whose
dedicated connection holds ``pg_try_advisory_lock(key)`` is the leader. The lock lives
exactly as long as that database session, so

- a replica that exits, crashes or is killed (kill -9 included) loses it at once: the
  server ends the session when the socket closes, and another replica's next try
  (every ``retry_s``) takes it;
- a replica cut off from the database loses it when the server notices the dead
  connection (TCP keepalives on the lease connection: about ``keepalive_s`` * 2) — and
  stops acting as leader as soon as its own heartbeat (a ``SELECT`` every ``retry_s``)
  fails, before the server releases the lock to someone else.

A process that is stopped (SIGSTOP, a VM frozen, a stall) keeps its socket, so the
server keeps its session and lock: the leader therefore renews ``renewed_at`` in the
``edgeflux_leases`` row of its lease every ``retry_s``, and a candidate that finds the
row older than ``lease_s`` ends the holder's lease session (``pg_terminate_backend``)
and takes the lock.

Fencing: each term of leadership gets the next ``epoch`` of that row. The leader's
writes carry it (``cloud.store.fence.fenced`` around the store calls); the store checks
it in the same transaction (``SELECT ... FOR SHARE`` of the lease row, so a new term
cannot begin while such a write is in flight) and refuses a write of an older term with
:class:`cloud.store.FencedError`. A deposed leader that wakes up mid-step thus writes
nothing, notices, and stands down. A fenced transaction that stalls holds the row for
at most ``lease_s`` (``idle_in_transaction_session_timeout``): the server then ends it.

The lease connection's ``application_name`` is ``edgeflux-lease:<name>:<host>:<pid>``,
so ``pg_locks`` joined with ``pg_stat_activity`` shows who leads (:func:`leader`).

SQLite has one writer process by construction: :func:`lease_for` returns None there
and the singleton simply runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from cloud.store.fence import DEFAULT_LEASE_S, TABLE

__all__ = [
    "DEFAULT_LEASE_S",
    "AdvisoryLease",
    "current_epoch",
    "leader",
    "lease_for",
    "lease_key",
]

log = logging.getLogger(__name__)

_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (name text PRIMARY KEY, epoch bigint NOT NULL, "
    "holder text NOT NULL, renewed_at timestamptz NOT NULL)"
)


def current_epoch(url: str, name: str) -> int | None:
    """The epoch of lease `name`'s latest term, or None if it was never held."""
    import psycopg

    with psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        try:
            row = conn.execute(f"SELECT epoch FROM {TABLE} WHERE name = %s", (name,)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return None if row is None else int(row[0])


def lease_key(name: str) -> int:
    """The advisory-lock key of lease `name`: a stable signed 64-bit hash."""
    digest = hashlib.blake2b(f"edgeflux.lease.{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _conninfo(url: str) -> str:
    """A libpq URI from a SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise ValueError(f"not a PostgreSQL URL: {scheme or url!r}")
    return f"postgresql://{rest}"


class AdvisoryLease:
    """Holds, or keeps trying to take, the advisory lock of `name` on `url`'s database.

    ``held`` is True while this process leads, ``epoch`` is the current term's number;
    `on_change(held)` is called (from the lease thread) on every change. :meth:`stop`
    gives the lease up. A holder that has not renewed for `lease_s` is deposed.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        retry_s: float = 1.0,
        keepalive_s: int = 3,
        lease_s: float = DEFAULT_LEASE_S,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if not 0 < 2 * retry_s <= lease_s:
            # the holder renews every retry_s: a lease shorter than two renewals would
            # depose healthy holders
            raise ValueError(f"lease_s ({lease_s:g}) must be at least twice retry_s ({retry_s:g})")
        self.conninfo = _conninfo(url)
        self.name = name
        self.key = lease_key(name)
        self.retry_s = retry_s
        self.keepalive_s = keepalive_s
        self.lease_s = lease_s
        self.epoch = 0
        self._renewed = 0.0  # monotonic time of the last renewal
        self.on_change = on_change
        self.application_name = f"edgeflux-lease:{name}:{socket.gethostname()}:{os.getpid()}"
        self._held = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        # a holder that stalled past its lease may have been deposed meanwhile
        return self._held.is_set() and time.monotonic() - self._renewed <= self.lease_s

    def wait_held(self, timeout_s: float) -> bool:
        return self._held.wait(timeout_s)

    def start(self) -> AdvisoryLease:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"edgeflux-lease-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close()

    # ---- the lease thread

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(2, int(self.retry_s * 5)),
            application_name=self.application_name,
            keepalives=1,
            keepalives_idle=self.keepalive_s,
            keepalives_interval=1,
            keepalives_count=2,
        )

    def _set(self, held: bool) -> None:
        if held == self._held.is_set():
            return
        if held:
            self._held.set()
        else:
            self._held.clear()
        log.warning("lease %s %s", self.name, "acquired" if held else "lost")
        if self.on_change is not None:
            try:
                self.on_change(held)
            except Exception:  # a listener must not stop the lease
                log.exception("lease %s listener failed", self.name)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # ends the session: the server releases the lock
            except Exception:
                log.debug("closing the lease connection failed", exc_info=True)
        self._set(False)

    def _step(self) -> None:
        if self._conn is None:
            self._conn = self._connect()
            self._ensure_table()
        if self.held:
            self._renew()
            return
        if not self._try_lock():
            if not self._depose_stale():
                return
            if not self._try_lock():
                return
        self._begin_term()

    def _ensure_table(self) -> None:
        with self._conn.transaction():
            # one creator at a time: concurrent CREATE ... IF NOT EXISTS may collide
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (lease_key("table"),))
            self._conn.execute(_CREATE)

    def _try_lock(self) -> bool:
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        return bool(row is not None and row[0])

    def _begin_term(self) -> None:
        """Holding the lock: start the next term (epoch + 1) and lead."""
        self._conn.execute(f"SET statement_timeout = {int(self.lease_s * 3000)}")
        row = self._conn.execute(
            f"INSERT INTO {TABLE} AS l (name, epoch, holder, renewed_at) "
            "VALUES (%s, 1, %s, now()) ON CONFLICT (name) DO UPDATE "
            "SET epoch = l.epoch + 1, holder = excluded.holder, renewed_at = now() "
            "RETURNING epoch",
            (self.name, self.application_name),
        ).fetchone()
        self.epoch = int(row[0])
        self._renewed = time.monotonic()
        log.warning("lease %s: term %d begins", self.name, self.epoch)
        self._set(True)

    def _renew(self) -> None:
        if time.monotonic() - self._renewed > self.lease_s:
            # stalled past the lease (stopped, frozen): another replica may lead by now
            raise RuntimeError(f"not renewed for over {self.lease_s:g} s")
        cur = self._conn.execute(
            f"UPDATE {TABLE} SET renewed_at = now() WHERE name = %s AND epoch = %s",
            (self.name, self.epoch),
        )
        if cur.rowcount != 1:
            raise RuntimeError(f"term {self.epoch} is over")
        self._renewed = time.monotonic()

    def _depose_stale(self) -> bool:
        """End the lease session of a holder that stopped renewing; True if one was."""
        row = self._conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN "
            f"{TABLE} t ON t.name = %s AND t.renewed_at < now() - make_interval(secs => %s) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = %s::oid AND l.objid = %s::oid",
            (self.name, self.lease_s, *_oids(self.key)),
        ).fetchone()
        if row is None:
            return False
        log.warning("lease %s: the holder stopped renewing; ending its session", self.name)
        self._conn.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # database gone or restarting: not leading, retry
                if self.held:
                    log.warning("lease %s heartbeat failed: %s", self.name, exc)
                self._close()
            self._stop.wait(self.retry_s)
        self._close()


def _oids(key: int) -> tuple[int, int]:
    """The (classid, objid) under which ``pg_locks`` shows bigint advisory key `key`."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def lease_for(
    url: str, name: str, on_change: Callable[[bool], None] | None = None, retry_s: float = 1.0
) -> AdvisoryLease | None:
    """A started lease where `url` is PostgreSQL; None for SQLite (one process)."""
    if not url.startswith(("postgresql", "postgres")):
        return None
    return AdvisoryLease(url, name, on_change=on_change, retry_s=retry_s).start()


def leader(url: str, name: str) -> str | None:
    """The ``application_name`` of the session holding lease `name`, or None."""
    import psycopg

    classid, objid = _oids(lease_key(name))
    with psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = %s::oid AND l.objid = %s::oid",
            (classid, objid),
        ).fetchone()
    return None if row is None else str(row[0])
