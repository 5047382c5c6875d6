"""Telemetry: runtime loop metrics + host metrics, sampled into points and batched.

Every ``sample_period_s`` the agent takes one :class:`~protos.telemetry_pb2.TelemetryPoint`
(the runtime's latest ``LoopMetrics`` — latency percentiles, deadline misses, safety
interventions — plus CPU, memory, disk and, where readable, temperature). Every
``telemetry_period_s`` the collected points become one ``TelemetryBatch`` in the spool,
stamped with the device's next sequence number so ingest can de-duplicate replays.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from fleet.spool import Spool
from protos import common_pb2, runtime_control_pb2, telemetry_pb2

__all__ = ["HostMetrics", "HostSampler", "TelemetryBatcher", "make_point"]


@dataclass(frozen=True)
class HostMetrics:
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    disk_free_bytes: float = 0.0
    temperature_c: float = 0.0


class HostSampler:
    """Reads /proc and /sys; anything unreadable reports 0 rather than failing."""

    def __init__(
        self, disk_path: Path, proc: Path = Path("/proc"), sys: Path = Path("/sys")
    ) -> None:
        self.disk_path = disk_path
        self.proc = proc
        self.sys = sys
        self._last_cpu: tuple[int, int] | None = None

    def _cpu_times(self) -> tuple[int, int] | None:
        try:
            first = (self.proc / "stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        values = [int(x) for x in first[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    def cpu_percent(self) -> float:
        now = self._cpu_times()
        if now is None:
            return 0.0
        last, self._last_cpu = self._last_cpu, now
        if last is None or now[0] <= last[0]:
            return 0.0
        busy = (now[0] - last[0]) - (now[1] - last[1])
        return max(0.0, min(100.0, 100.0 * busy / (now[0] - last[0])))

    def memory_percent(self) -> float:
        try:
            info = {}
            for line in (self.proc / "meminfo").read_text().splitlines():
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0])
            total, avail = info["MemTotal"], info["MemAvailable"]
        except (OSError, KeyError, ValueError, IndexError):
            return 0.0
        return 100.0 * (total - avail) / total if total else 0.0

    def temperature_c(self) -> float:
        for zone in sorted((self.sys / "class" / "thermal").glob("thermal_zone*/temp")):
            try:
                return int(zone.read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
        return 0.0

    def sample(self) -> HostMetrics:
        try:
            free = float(shutil.disk_usage(self.disk_path).free)
        except OSError:
            free = 0.0
        return HostMetrics(self.cpu_percent(), self.memory_percent(), free, self.temperature_c())


def make_point(
    at: dt.datetime,
    loop: runtime_control_pb2.LoopMetrics | None,
    host: HostMetrics,
    update_state: str = "",
    active_bundle: common_pb2.BundleRef | None = None,
    scheduling: str = "",
    realtime: bool = False,
) -> telemetry_pb2.TelemetryPoint:
    """One telemetry point from the runtime's metrics (None: runtime not reachable)."""
    p = telemetry_pb2.TelemetryPoint(
        cpu_percent=host.cpu_percent,
        memory_percent=host.memory_percent,
        disk_free_bytes=host.disk_free_bytes,
        temperature_c=host.temperature_c,
        update_state=update_state,
        scheduling=scheduling,
        realtime=realtime,
    )
    p.at.FromDatetime(at)
    if loop is not None:
        p.loop_p50_ms = loop.latency_p50_ms
        p.loop_p99_ms = loop.latency_p99_ms
        p.loop_p999_ms = loop.latency_p999_ms
        p.ticks = loop.ticks
        p.deadline_misses = loop.deadline_misses
        for reason, n in loop.interventions.items():
            p.interventions[reason] = n
    if active_bundle is not None and active_bundle.name:
        p.active_bundle.CopyFrom(active_bundle)
    return p


class TelemetryBatcher:
    """Collects points; :meth:`flush` writes them as one sequenced batch into the spool."""

    def __init__(
        self, spool: Spool, device_id: str, topic_name: str, max_points: int = 1000
    ) -> None:
        self.spool = spool
        self.device_id = device_id
        self.topic_name = topic_name
        self.max_points = max_points
        self._points: list[telemetry_pb2.TelemetryPoint] = []
        self._lock = threading.Lock()

    def add(self, point: telemetry_pb2.TelemetryPoint) -> None:
        with self._lock:
            self._points.append(point)
            if len(self._points) > self.max_points:  # keep the newest if flushing stalls
                del self._points[0]

    def flush(self) -> int | None:
        """Spool the collected points as one batch; returns its sequence (None if empty)."""
        with self._lock:
            points, self._points = self._points, []
        if not points:
            return None

        def build(sequence: int) -> bytes:
            batch = telemetry_pb2.TelemetryBatch(device_id=self.device_id, sequence=sequence)
            batch.points.extend(points)
            return batch.SerializeToString()

        return self.spool.put("telemetry", self.topic_name, build)
