"""Loop metrics: a log-bucketed latency histogram and the counters of the control loop.

The histogram records nanosecond durations into buckets whose width grows by 2 % per
bucket (relative error of a reported quantile <= 1 %), from 1 µs to ~100 s, in a fixed
list of ints: recording is O(1), allocation-free and cheap enough for the hot path, and
p99.9 over millions of ticks costs no memory (unlike keeping samples).

Only the loop thread writes; readers (gRPC status, the metrics stream) take a
snapshot, which is consistent enough for monitoring (each int update is atomic under
the GIL).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatencyHistogram", "LoopCounters", "MetricsSnapshot"]

_GROWTH = 1.02
_INV_LOG_GROWTH = 1.0 / math.log(_GROWTH)
_MIN_NS = 1_000  # everything below 1 µs lands in bucket 0
_LOG_MIN = math.log(_MIN_NS)
_N_BUCKETS = int((math.log(100e9) - _LOG_MIN) * _INV_LOG_GROWTH) + 2


class LatencyHistogram:
    """Durations in nanoseconds; quantiles in milliseconds."""

    __slots__ = ("_buckets", "count", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self._buckets = [0] * _N_BUCKETS
        self.count = 0
        self.sum_ns = 0
        self.max_ns = 0

    def record_ns(self, ns: int) -> None:
        if ns > _MIN_NS:
            i = int((math.log(ns) - _LOG_MIN) * _INV_LOG_GROWTH) + 1
            if i >= _N_BUCKETS:
                i = _N_BUCKETS - 1
        else:
            i = 0
        self._buckets[i] += 1
        self.count += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def record_many(self, samples_ns: Sequence[int]) -> None:
        """Record a batch at once (vectorised: ~40x cheaper per sample than `record_ns`)."""
        if not samples_ns:
            return
        arr = np.asarray(samples_ns, dtype=np.int64)
        idx = np.zeros(arr.size, np.int64)
        big = arr > _MIN_NS
        if big.any():
            pos = ((np.log(arr[big]) - _LOG_MIN) * _INV_LOG_GROWTH).astype(np.int64) + 1
            idx[big] = np.minimum(pos, _N_BUCKETS - 1)
        counts = np.bincount(idx, minlength=_N_BUCKETS)
        for i in np.flatnonzero(counts).tolist():
            self._buckets[i] += int(counts[i])
        self.count += int(arr.size)
        self.sum_ns += int(arr.sum())
        self.max_ns = max(self.max_ns, int(arr.max()))

    def quantile_ms(self, q: float) -> float:
        """The q-quantile (0 < q <= 1) in ms: the geometric middle of its bucket."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {q}")
        buckets = list(self._buckets)
        total = sum(buckets)
        if total == 0:
            return 0.0
        rank = math.ceil(q * total)
        seen = 0
        for i, n in enumerate(buckets):
            seen += n
            if seen >= rank:
                return min(_bucket_mid_ns(i), float(self.max_ns)) / 1e6
        return self.max_ns / 1e6  # pragma: no cover - unreachable: seen reaches total

    @property
    def max_ms(self) -> float:
        return self.max_ns / 1e6

    @property
    def mean_ms(self) -> float:
        return self.sum_ns / self.count / 1e6 if self.count else 0.0

    def merge(self, other: LatencyHistogram) -> None:
        for i, n in enumerate(other._buckets):
            self._buckets[i] += n
        self.count += other.count
        self.sum_ns += other.sum_ns
        self.max_ns = max(self.max_ns, other.max_ns)


def _bucket_mid_ns(i: int) -> float:
    if i == 0:
        return _MIN_NS / 2
    lo = math.exp(_LOG_MIN + (i - 1) / _INV_LOG_GROWTH)
    return lo * math.sqrt(_GROWTH)


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the loop reports: per-tick latency (read → infer → write), start jitter, counts."""

    ticks: int
    deadline_misses: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_p999_ms: float
    latency_max_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    rate_hz: float
    interventions: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    """Tick slots that never ran (a stall swallowed them); they are misses too."""

    @property
    def miss_rate(self) -> float:
        """Missed deadlines per tick slot (ticks run plus slots skipped), in [0, 1]."""
        slots = self.ticks + self.skipped
        return self.deadline_misses / slots if slots else 0.0


class LoopCounters:
    """Everything the control loop counts. Written by the loop thread only."""

    def __init__(self) -> None:
        self.latency = LatencyHistogram()
        self.jitter = LatencyHistogram()
        self.ticks = 0
        self.deadline_misses = 0
        self.skipped = 0
        """Tick slots that passed while an earlier tick overran (also counted as misses)."""
        self.swap_misses = 0
        """Misses of the tick on which a policy swap happened (the swap's own cost)."""
        """Tick slots that passed while an earlier tick overran (also counted as misses)."""
        self.interventions: Counter[str] = Counter()
        # The loop appends raw samples here (~50 ns) and `flush()` bins them in batches
        # (~60 µs per 512): rare enough to stay out of the p99 of tick cost. The histograms
        # lag the tick counter by at most FLUSH_EVERY samples or FLUSH_PERIOD_NS.
        self.pending_latency: list[int] = []
        self.pending_jitter: list[int] = []
        self.next_flush_ns = 0

    FLUSH_EVERY = 512
    FLUSH_PERIOD_NS = 1_000_000_000

    def flush(self) -> None:
        """Move pending samples into the histograms (loop thread only)."""
        self.next_flush_ns = time.perf_counter_ns() + self.FLUSH_PERIOD_NS
        self.latency.record_many(self.pending_latency)
        self.pending_latency.clear()
        self.jitter.record_many(self.pending_jitter)
        self.pending_jitter.clear()

    def intervene(self, reason: str) -> None:
        self.interventions[reason] += 1

    def snapshot(self, rate_hz: float) -> MetricsSnapshot:
        return MetricsSnapshot(
            ticks=self.ticks,
            deadline_misses=self.deadline_misses,
            latency_p50_ms=self.latency.quantile_ms(0.5),
            latency_p99_ms=self.latency.quantile_ms(0.99),
            latency_p999_ms=self.latency.quantile_ms(0.999),
            latency_max_ms=self.latency.max_ms,
            jitter_p99_ms=self.jitter.quantile_ms(0.99),
            jitter_max_ms=self.jitter.max_ms,
            rate_hz=rate_hz,
            interventions=dict(self.interventions),
            skipped=self.skipped,
        )
