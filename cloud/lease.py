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
from collections.abc import Callable
from typing import Any

__all__ = ["AdvisoryLease", "leader", "lease_for", "lease_key"]

log = logging.getLogger(__name__)


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

    ``held`` is True while this process leads; `on_change(held)` is called (from the
    lease thread) on every change. :meth:`stop` gives the lease up.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        retry_s: float = 1.0,
        keepalive_s: int = 3,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.conninfo = _conninfo(url)
        self.name = name
        self.key = lease_key(name)
        self.retry_s = retry_s
        self.keepalive_s = keepalive_s
        self.on_change = on_change
        self.application_name = f"edgeflux-lease:{name}:{socket.gethostname()}:{os.getpid()}"
        self._held = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._held.is_set()

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
        if self.held:
            self._conn.execute("SELECT 1")  # heartbeat: the session (and lock) still live
            return
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if row is not None and row[0]:
            self._set(True)

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

    unsigned = lease_key(name) & 0xFFFF_FFFF_FFFF_FFFF  # a bigint key shows as two oids
    classid, objid = unsigned >> 32, unsigned & 0xFFFF_FFFF
    with psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = %s::oid AND l.objid = %s::oid",
            (classid, objid),
        ).fetchone()
    return None if row is None else str(row[0])
