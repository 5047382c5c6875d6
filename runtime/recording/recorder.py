"""The flight recorder: every control tick into MCAP segments, off the loop thread.

The loop calls `FlightRecorder.record` once per tick, after the action is written.
That call only copies the observation and action bytes into a bounded queue (no
encoding, no I/O); a writer thread drains the queue every `flush_s`, encodes ROS 2
messages (`runtime.recording.schema`) and writes them into the current segment of a
`SegmentRing`. A new segment starts every `segment_s`; finished segments are renamed
into place, and the ring keeps the directory under its quota.

An intervention (any safety reason the loop counted during a tick) or a fault
(`mark`) keeps the segments that hold the `keep_before_s` before it and the
`keep_after_s` after it: those are deleted last when the quota runs out.

The recorder never stops the loop: a writer that falls behind loses the oldest queued
ticks (counted in `dropped`), and a recording error stops recording (logged), never
the robot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from runtime.recording.schema import (
    EVENT_DEFINITION,
    EVENT_TYPE,
    TICK_DEFINITION,
    TICK_TYPE,
    encode_event,
    encode_tick,
    schema_text,
)
from runtime.recording.segments import SegmentRing

__all__ = ["EVENT_TOPIC", "TICK_TOPIC", "FlightRecorder", "RecordedPolicy", "TickCounters"]

log = logging.getLogger(__name__)

TICK_TOPIC = "/edgeflux/tick"
EVENT_TOPIC = "/edgeflux/events"
_F32 = np.dtype(np.float32)
_ND = np.ndarray
_dict_eq = dict.__eq__


class TickCounters(Protocol):
    """What the recorder reads from the loop's counters (`runtime.metrics.LoopCounters`)."""

    ticks: int
    deadline_misses: int

    @property
    def interventions(self) -> dict[str, int]: ...


class RecordedPolicy(Protocol):
    """What the recorder reads from the active policy (`runtime.loop.LoadedPolicy`)."""

    @property
    def label(self) -> str: ...

    @property
    def root_digest(self) -> str: ...


# (tick, scheduled start ns, latency ns, observation bytes, action bytes,
#  interventions if changed, deadline misses so far, policy)
_Item = tuple[int, int, int, bytes, bytes, "dict[str, int] | None", int, RecordedPolicy]


class FlightRecorder:
    def __init__(
        self,
        directory: Path,
        *,
        quota_bytes: int,
        segment_s: float = 10.0,
        keep_before_s: float = 5.0,
        keep_after_s: float = 5.0,
        flush_s: float = 0.05,
        max_pending: int = 50_000,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if segment_s <= 0 or flush_s <= 0:
            raise ValueError("segment_s and flush_s must be > 0")
        self.ring = SegmentRing(directory, quota_bytes)
        self.segment_ns = int(segment_s * 1e9)
        self.keep_before_ns = int(keep_before_s * 1e9)
        self.keep_after_ns = int(keep_after_s * 1e9)
        self.flush_s = flush_s
        self.metadata = dict(metadata or {})
        self._q: deque[_Item] = deque(maxlen=max_pending)
        self._append = self._q.append
        self._events: deque[tuple[int, str, str]] = deque(maxlen=1000)
        self._seen: dict[str, int] = {}  # the loop thread's last copy of the counts
        self._before: dict[str, int] = {}  # the writer thread's
        # Wall clock of a perf_counter_ns reading (MCAP log times are wall clock).
        self._wall_offset = time.time_ns() - time.perf_counter_ns()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # Writer-thread state.
        self._file: IO[bytes] | None = None
        self._writer: Any = None
        self._part: Path | None = None
        self._seg_start = 0
        self._seg_keep = False
        self._keep_until = 0
        self._tick_channel = 0
        self._event_channel = 0
        self._last_tick = -1
        self._last_misses = -1
        self._last_policy: RecordedPolicy | None = None
        self._seq = 0
        self.recorded = 0
        self.dropped = 0
        self.events = 0

    # ---- the loop thread ---------------------------------------------------------------

    def record(
        self,
        due_ns: int,
        latency_ns: int,
        obs: object,
        action: np.ndarray,
        counters: TickCounters,
        policy: RecordedPolicy,
    ) -> None:
        """One tick (called by the loop after the write): copies, never blocks."""
        iv = counters.interventions
        changed = None
        if not _dict_eq(iv, self._seen):  # dict's own ==: Counter's is pure Python
            changed = self._seen = dict(iv)
        self._append(
            (
                counters.ticks,
                due_ns,
                latency_ns,
                obs.tobytes() if obs.__class__ is _ND and obs.dtype is _F32 else b"",
                action.tobytes(),
                changed,
                counters.deadline_misses,
                policy,
            )
        )

    def mark(self, kind: str, detail: str) -> None:
        """A fault or other event from outside the loop (e.g. the loop died, a rollback)."""
        self._events.append((time.perf_counter_ns(), kind, detail))

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flight-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, finish the open segment."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.flush_s):
                self.drain()
            self.drain()
        except BaseException as exc:  # recording must never take the robot down
            self.error = exc
            log.exception("flight recorder stopped")
        finally:
            try:
                self._close_segment()
            except Exception:
                log.exception("flight recorder could not finish its last segment")

    def drain(self) -> int:
        """Write everything queued so far (the writer thread; tests call it directly)."""
        n = 0
        q = self._q
        while self._events:
            at, kind, detail = self._events.popleft()
            self._event(at + self._wall_offset, max(self._last_tick, 0), kind, detail)
        while q:
            tick, due, latency, obs, act, changed, misses, policy = q.popleft()
            wall = due + self._wall_offset
            if self._writer is None or wall >= self._seg_start + self.segment_ns:
                self._rotate(wall)
            if self._last_tick >= 0 and tick > self._last_tick + 1:
                self.dropped += tick - self._last_tick - 1
            reasons: list[str] = []
            if changed is not None:
                before = self._before
                reasons = [r for r, c in changed.items() if c > before.get(r, 0)]
                self._before = changed
            if policy is not self._last_policy:
                if self._last_policy is not None:
                    self._event(wall, tick, "switch", f"{policy.label} {policy.root_digest}")
                self._last_policy = policy
            late = 0 <= self._last_misses < misses
            self._last_misses = misses
            self._last_tick = tick
            data = encode_tick(
                wall,
                tick,
                obs,
                act,
                latency / 1e6,
                late,
                reasons,
                policy.label,
                policy.root_digest,
            )
            self._seq += 1
            self._writer.add_message(self._tick_channel, wall, data, wall, self._seq)
            if reasons:
                self._event(wall, tick, "intervention", ", ".join(reasons))
            self.recorded += 1
            n += 1
        return n

    def _event(self, wall: int, tick: int, kind: str, detail: str) -> None:
        if self._writer is None:
            self._rotate(wall)
        self._seq += 1
        self._writer.add_message(
            self._event_channel, wall, encode_event(wall, tick, kind, detail), wall, self._seq
        )
        self.events += 1
        if kind in ("intervention", "fault"):
            self._keep_until = max(self._keep_until, wall + self.keep_after_ns)
            self._seg_keep = True
            if wall - self.keep_before_ns < self._seg_start:
                self.ring.keep_since(wall - self.keep_before_ns)

    def _rotate(self, wall: int) -> None:
        self._close_segment()
        from mcap.writer import CompressionType, Writer

        self._seg_start = wall
        self._seg_keep = wall < self._keep_until
        self._part = self.ring.part_path(wall)
        self._file = self._part.open("wb")
        w = Writer(self._file, chunk_size=256 * 1024, compression=CompressionType.ZSTD)
        w.start(profile="ros2", library="edgeflux flight recorder")
        tick_schema = w.register_schema(TICK_TYPE, "ros2msg", schema_text(TICK_DEFINITION))
        event_schema = w.register_schema(EVENT_TYPE, "ros2msg", schema_text(EVENT_DEFINITION))
        self._tick_channel = w.register_channel(TICK_TOPIC, "cdr", tick_schema)
        self._event_channel = w.register_channel(EVENT_TOPIC, "cdr", event_schema)
        if self.metadata:
            w.add_metadata("edgeflux", self.metadata)
        self._writer = w

    def _close_segment(self) -> None:
        if self._writer is None or self._file is None or self._part is None:
            return
        self._writer.finish()
        self._file.close()
        self._writer = None
        self._file = None
        self.ring.finish(self._part, self._seg_keep)
        self._part = None
