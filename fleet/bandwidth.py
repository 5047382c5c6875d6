"""Pacing update downloads: a byte-rate cap and a low-priority mode.

A robot on a metered or shared link caps what updates may use
(`AgentConfig.download_max_bytes_per_s`); in low-priority mode
(`download_low_priority`) a download also pauses while the agent's telemetry spool
has messages waiting, so an update never delays what the fleet is reporting. A
pause is bounded (`max_yield_s` per piece): a spool that never drains slows the
download, it does not stop it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """Call `take(n)` after each `n` bytes; it sleeps as long as the cap requires."""

    def __init__(
        self,
        max_bytes_per_s: int = 0,
        yield_to: Callable[[], bool] | None = None,
        *,
        max_yield_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_bytes_per_s < 0:
            raise ValueError(f"max_bytes_per_s must be >= 0, got {max_bytes_per_s}")
        self.rate = max_bytes_per_s
        self.yield_to = yield_to
        self.max_yield_s = max_yield_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the bytes taken so far are paid for
        self.slept_s = 0.0

    def take(self, n: int) -> None:
        if self.yield_to is not None:
            start = self._clock()
            while self.yield_to() and self._clock() - start < self.max_yield_s:
                self._pause(0.05)
        if not self.rate:
            return
        with self._lock:
            now = self._clock()
            self._free_at = max(self._free_at, now) + n / self.rate
            wait = self._free_at - now
        if wait > 0:
            self._pause(wait)

    def _pause(self, seconds: float) -> None:
        self.slept_s += seconds
        self._sleep(seconds)
