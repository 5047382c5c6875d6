"""A disk spool for outgoing MQTT messages (SQLite, stdlib ``sqlite3``).

Why a disk spool: a robot loses its uplink for minutes at a time and reboots without
warning; an in-memory queue (Greengrass' default) loses exactly the telemetry that
explains the outage. Here:

- every message gets the device's next **sequence number** in the same transaction
  that stores it, so ingest can de-duplicate by (device, sequence) whatever is resent;
- **priority classes**: events leave before telemetry (:data:`PRIORITY`);
- each class has a **byte budget** and a **TTL**; when a class is full its oldest
  messages are dropped and counted (``dropped`` counters, persisted), expired ones too;
- a message is deleted only when its PUBACK arrives (:meth:`Spool.ack`); everything
  not acknowledged when the process dies is sent again after the restart.

Thread-safe: paho acknowledges on its network thread while the agent enqueues on its
own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "PRIORITY",
    "ClassBudget",
    "Publisher",
    "Spool",
    "SpoolError",
    "SpoolPump",
    "SpooledMessage",
]

#: Lower leaves first.
PRIORITY: dict[str, int] = {"events": 0, "state": 0, "telemetry": 1}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    klass TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (priority, id);
CREATE INDEX IF NOT EXISTS messages_class ON messages (klass, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolError(RuntimeError):
    """The spool database cannot be opened or written; the message names the file."""


@dataclass(frozen=True)
class ClassBudget:
    max_bytes: int = 16 * 1024 * 1024
    ttl_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    klass: str
    topic: str
    sequence: int
    payload: bytes
    created_at: float


class Spool:
    """The persistent outbox of one device."""

    def __init__(
        self,
        path: Path,
        budgets: dict[str, ClassBudget] | None = None,
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.budgets = budgets or {}
        self._clock = clock
        self._lock = threading.Lock()
        self._last_expiry = float("-inf")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed enqueue/ack survives a power loss, not only a crash.
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool database {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- counters

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {str(n): int(v) for n, v in self._db.execute("SELECT name, value FROM counters")}

    @property
    def last_sequence(self) -> int:
        with self._lock:
            return self._counter("sequence")

    # ---- enqueue

    def put(self, klass: str, topic: str, build: Callable[[int], bytes]) -> int:
        """Store one message; `build(sequence)` makes its payload. Returns the sequence."""
        if klass not in PRIORITY:
            raise ValueError(f"unknown spool class {klass!r}; expected one of {sorted(PRIORITY)}")
        budget = self.budgets.get(klass, ClassBudget())
        now = self._clock()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                sequence = self._counter("sequence") + 1
                payload = build(sequence)
                if len(payload) > budget.max_bytes:
                    raise ValueError(
                        f"{klass} message of {len(payload)} bytes exceeds the class budget "
                        f"of {budget.max_bytes} bytes"
                    )
                self._bump("sequence", 1)
                self._expire_locked(now)
                used = self._class_bytes(klass)
                if used + len(payload) > budget.max_bytes:
                    self._drop_oldest_locked(klass, used + len(payload) - budget.max_bytes)
                self._db.execute(
                    "INSERT INTO messages (klass, priority, topic, sequence, payload, size, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (klass, PRIORITY[klass], topic, sequence, payload, len(payload), now),
                )
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise SpoolError(
                        f"spool {self.path}: cannot store a {klass} message: {exc}"
                    ) from exc
                raise
            return sequence

    def _class_bytes(self, klass: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM messages WHERE klass = ?", (klass,)
        ).fetchone()
        return int(row[0])

    def _drop_oldest_locked(self, klass: str, need: int) -> None:
        freed = dropped = 0
        rows = self._db.execute(
            "SELECT id, size FROM messages WHERE klass = ? ORDER BY id", (klass,)
        ).fetchall()
        ids = []
        for mid, size in rows:
            if freed >= need:
                break
            ids.append(mid)
            freed += int(size)
            dropped += 1
        self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
        self._bump(f"dropped.{klass}", dropped)

    def _expire_locked(self, now: float) -> None:
        for klass in PRIORITY:
            ttl = self.budgets.get(klass, ClassBudget()).ttl_s
            cur = self._db.execute(
                "DELETE FROM messages WHERE klass = ? AND created_at < ?", (klass, now - ttl)
            )
            if cur.rowcount > 0:
                self._bump(f"expired.{klass}", cur.rowcount)

    # ---- dequeue

    def peek(
        self, limit: int, exclude: set[int] | frozenset[int] = frozenset()
    ) -> list[SpooledMessage]:
        """The next `limit` messages in send order (priority, then age), skipping `exclude`."""
        with self._lock:
            now = self._clock()
            if now - self._last_expiry >= 1.0:  # the pump peeks every few ms; expiry is coarse
                self._last_expiry = now
                self._db.execute("BEGIN IMMEDIATE")
                self._expire_locked(now)
                self._db.execute("COMMIT")
            rows = self._db.execute(
                "SELECT id, klass, topic, sequence, payload, created_at FROM messages "
                "ORDER BY priority, id LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        out = [
            SpooledMessage(int(i), str(k), str(t), int(s), bytes(p), float(c))
            for i, k, t, s, p, c in rows
            if int(i) not in exclude
        ]
        return out[:limit]

    def ack(self, message_id: int) -> None:
        """The broker acknowledged `message_id`: it may leave the spool now."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def pending_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size),0) FROM messages").fetchone()[0])


class Publisher(Protocol):
    """What the pump needs from a transport (implemented by fleet.mqtt.MqttTransport)."""

    def is_connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, on_ack: Callable[[], None], qos: int = 1
    ) -> bool: ...


@dataclass
class SpoolPump:
    """Moves spooled messages to the transport with at most `window` unacknowledged.

    A message sent but not acknowledged within `resend_after_s` is offered again (the
    broker session may be gone); duplicates are harmless, ingest drops them by sequence.
    """

    spool: Spool
    publisher: Publisher
    window: int = 32
    resend_after_s: float = 30.0
    _inflight: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def pump(self) -> int:
        """Publish as many messages as the window allows; returns how many were handed over."""
        if not self.publisher.is_connected():
            return 0
        now = time.monotonic()
        with self._lock:
            for mid, sent in list(self._inflight.items()):
                if now - sent > self.resend_after_s:
                    del self._inflight[mid]
            room = self.window - len(self._inflight)
            busy = set(self._inflight)
        if room <= 0:
            return 0
        sent = 0
        for msg in self.spool.peek(room, busy):
            with self._lock:
                self._inflight[msg.id] = now
            if not self.publisher.publish(msg.topic, msg.payload, self._acker(msg.id)):
                with self._lock:
                    self._inflight.pop(msg.id, None)
                break
            sent += 1
        return sent

    def _acker(self, message_id: int) -> Callable[[], None]:
        def on_ack() -> None:
            self.spool.ack(message_id)
            with self._lock:
                self._inflight.pop(message_id, None)

        return on_ack
