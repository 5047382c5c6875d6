"""Update hints are untrusted: at most they trigger a TUF refresh.

:class:`HintGate` is pure: it parses a hint, drops garbage and replays of what is
already installed, and rate-limits refreshes — a flood of hints, forged or not,
costs at most one refresh per ``min_interval_s`` (the newest pending hint wins).
A hint's numbers decide nothing else: before acting, the agent replaces them with the
signed desired state's (bundle, sequence, generation), and whether an update already
failed here is judged on those alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from protos import telemetry_pb2

__all__ = ["Hint", "HintGate"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Hint:
    bundle_name: str
    sequence: int
    generation: int
    rollout_id: str


class HintGate:
    def __init__(
        self,
        installed_sequence: Callable[[str], int],
        min_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._installed = installed_sequence
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_refresh: float | None = None
        self._pending: Hint | None = None
        self.counters: Counter[str] = Counter()

    def offer(self, payload: bytes) -> Hint | None:
        """Validate a raw hint; keep it pending if it may be worth a refresh."""
        self.counters["received"] += 1
        try:
            msg = telemetry_pb2.UpdateHint.FromString(payload)
        except (DecodeError, ValueError):
            self.counters["dropped.malformed"] += 1
            return None
        if not _NAME.match(msg.bundle_name) or msg.sequence == 0:
            self.counters["dropped.malformed"] += 1
            return None
        if msg.sequence <= self._installed(msg.bundle_name):
            self.counters["dropped.stale"] += 1
            return None
        hint = Hint(msg.bundle_name, msg.sequence, msg.generation, msg.rollout_id[:64])
        if self._pending is None or hint.sequence >= self._pending.sequence:
            self._pending = hint
        return hint

    def take(self) -> Hint | None:
        """The pending hint if a refresh is allowed now (and note the refresh), else None."""
        if self._pending is None:
            return None
        now = self._clock()
        if self._last_refresh is not None and now - self._last_refresh < self.min_interval_s:
            return None
        hint, self._pending = self._pending, None
        if hint.sequence <= self._installed(hint.bundle_name):  # installed meanwhile
            self.counters["dropped.stale"] += 1
            return None
        self._last_refresh = now
        self.counters["refreshes"] += 1
        return hint

    def seconds_until_allowed(self) -> float:
        if self._last_refresh is None:
            return 0.0
        return max(0.0, self.min_interval_s - (self._clock() - self._last_refresh))
