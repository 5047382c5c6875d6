"""Simulated robots: many real MQTT robots on one asyncio loop, cheap per message.

A `SimRobot` is one MQTT connection over mTLS with its own device certificate
(`bench.simmqtt.MqttLink`), so the broker takes its client id and ACL identity from
the certificate. On connect it subscribes to its ``updates`` topic, announces itself
on ``state`` (retained, with an offline will), and then sends what the agent's encoder
makes: a ``TelemetryBatch`` of one point built by `fleet.telemetry.make_point`, the
same message object re-serialised with only the sequence and the time changed. An
``UpdateHint`` is answered as an agent on a no-op runtime answers it: one ``update``
event per state of the update path, up to COMMITTED.

`RobotLoop` ticks all robots of a loop from one timer: each robot has a period and a
phase; every wake-up sends the telemetry of every robot that is due, then sleeps until
the next one is (at least `tick_s`), so thousands of robots cost a few hundred wake-ups
a second, not one task each.

To change what a robot sends or how it answers, subclass `SimRobot` and override
`before_telemetry` (adjust `self.point`) or `on_hint` (use `emit_event`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.simmqtt import MqttLink, client_context
from fleet.mqtt import topic
from fleet.telemetry import HostMetrics, make_point
from protos import common_pb2, runtime_control_pb2, telemetry_pb2

__all__ = ["UPDATE_STATES", "Pki", "RobotLoop", "SimRobot", "TelemetryEncoder", "connect_all"]

UPDATE_STATES = (
    "REFRESHING",
    "DOWNLOADING",
    "STAGING",
    "ATTESTING",
    "SHADOWING",
    "SWITCHING",
    "HEALTH_WINDOW",
    "COMMITTING",
    "COMMITTED",
)
HOST = HostMetrics(cpu_percent=12.5, memory_percent=40.0, disk_free_bytes=8e9, temperature_c=45.0)


@dataclass(frozen=True)
class Pki:
    """A directory of certificates: `<name>.crt` / `<name>.key`, the fleet CA in `ca`."""

    dir: Path
    ca: Path

    def files(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TelemetryEncoder:
    """A robot's ``TelemetryBatch`` of one point, as the agent encodes it: the point from
    `fleet.telemetry.make_point`, kept in one message object that is re-serialised with
    only the sequence and the time changed."""

    def __init__(self, device_id: str) -> None:
        metrics = runtime_control_pb2.LoopMetrics(latency_p50_ms=0.1, latency_p99_ms=0.2, ticks=50)
        self._batch = telemetry_pb2.TelemetryBatch(device_id=device_id)
        self.point = self._batch.points.add()
        self.point.CopyFrom(make_point(_now(), metrics, HOST))
        self._at = self.point.at

    def payload(self, sequence: int, at_ns: int) -> bytes:
        """The batch with `sequence`, its point stamped `at_ns` (to the microsecond, as
        the agent's datetime stamps are)."""
        self._batch.sequence = sequence
        us = at_ns // 1000
        self._at.seconds = us // 1_000_000
        self._at.nanos = us % 1_000_000 * 1000
        return self._batch.SerializeToString()


class SimRobot:
    """One simulated robot. Create it on the loop that will run it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        device_id: str,
        pki: Pki,
        port: int,
        host: str = "127.0.0.1",
        mqtt5: bool = True,
    ) -> None:
        self.loop = loop
        self.device_id = device_id
        self.topics = {k: topic(device_id, k) for k in ("telemetry", "events", "state", "updates")}
        cert, key = pki.files(device_id)
        self.link = MqttLink(
            loop,
            device_id,
            client_context(pki.ca, cert, key),
            host,
            port,
            mqtt5=mqtt5,
            will=(self.topics["state"], self._state(False)),
            on_message=self._on_message,
            on_close=self._on_close,
        )
        self.dropped = ""
        """Why the connection ended without `close()` (empty while it has not)."""
        base = time.time_ns() // 1_000_000  # sequences never repeat across runs
        self.first_seq = base  # telemetry sent: first_seq + 1 .. seq
        self.seq = base
        self.event_seq = base + 10**10  # events have their own sequence space
        self.hints = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.telemetry = TelemetryEncoder(device_id)
        self.point = self.telemetry.point
        """The telemetry point sent; change its fields in `before_telemetry`."""
        self._topic = self.topics["telemetry"]

    @property
    def sent(self) -> int:
        """Telemetry messages sent so far."""
        return self.seq - self.first_seq

    @property
    def connected(self) -> bool:
        return self.link.connected

    def _state(self, online: bool) -> bytes:
        st = telemetry_pb2.DeviceState(device_id=self.device_id, online=online)
        st.at.FromDatetime(_now())
        return st.SerializeToString()

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Connect, subscribe to its updates, announce itself online (retained)."""
        await self.link.connect(timeout_s)
        code = await self.link.subscribe(self.topics["updates"], 1, timeout_s)
        if code >= 0x80:
            raise RuntimeError(f"{self.device_id}: the broker refused its updates topic")
        self.link.publish(self.topics["state"], self._state(True), qos=1, retain=True)

    def close(self) -> None:
        self.link.close()

    def _on_close(self, reason: str) -> None:
        self.dropped = reason

    # ------------------------------------------------------------------ telemetry

    def before_telemetry(self) -> None:
        """Called before each telemetry message: a subclass adjusts `self.point`."""

    def send_telemetry(self) -> None:
        if not self.link.connected:
            return
        self.before_telemetry()
        self.seq += 1
        self.link.publish(self._topic, self.telemetry.payload(self.seq, time.time_ns()), 1)

    # ------------------------------------------------------------------ updates

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        if topic_name != self.topics["updates"]:
            return
        try:
            hint = telemetry_pb2.UpdateHint.FromString(payload)
        except Exception:  # a malformed hint is ignored, as the agent ignores it
            return
        self.hints += 1
        task = self.loop.create_task(self.on_hint(hint))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def emit_event(
        self,
        state: str,
        bundle: tuple[str, str, int],
        reason: str = "OK",
        detail: str = "",
        kind: str = "update",
    ) -> None:
        """One ``Event`` on ``events`` (QoS 1), as the agent's `emit_event` encodes it;
        `bundle` is (name, version, sequence)."""
        self.event_seq += 1
        ev = telemetry_pb2.Event(
            device_id=self.device_id,
            sequence=self.event_seq,
            kind=kind,
            state=state,
            reason_code=reason,
            detail=detail[:2000],
        )
        ev.at.FromDatetime(_now())
        name, version, sequence = bundle
        ev.bundle.CopyFrom(common_pb2.BundleRef(name=name, version=version, sequence=sequence))
        self.link.publish(self.topics["events"], ev.SerializeToString(), 1)

    async def on_hint(self, hint: telemetry_pb2.UpdateHint) -> None:
        """An agent on a no-op runtime: every state of the update path, then COMMITTED."""
        for state in UPDATE_STATES:
            self.emit_event(state, (hint.bundle_name, "", hint.sequence))
            await asyncio.sleep(0)


class RobotLoop:
    """Sends the telemetry of many robots from one timer on their loop; every
    `ping_every_s` it also sends a PINGREQ on each connection that wrote nothing for
    half its keep-alive, also after the sending stopped, until `stop()`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, tick_s: float = 0.005, ping_every_s: float = 5.0
    ) -> None:
        self.loop = loop
        self.tick_s = tick_s
        self.ping_every_s = ping_every_s
        self.robots: list[SimRobot] = []
        self._heap: list[tuple[float, int, float, SimRobot, float, int]] = []
        self._n = 0
        self._timer: asyncio.TimerHandle | None = None
        self._until = float("inf")
        self._started = False
        self._next_ping = 0.0
        self.late_s = 0.0
        """The most a send was late (the loop could not keep up when it grows)."""

    def add(self, robot: SimRobot, period_s: float, first_at: float) -> None:
        """Send `robot`'s telemetry every `period_s` from wall-clock time `first_at`."""
        self.robots.append(robot)
        self._n += 1
        heapq.heappush(self._heap, (first_at, self._n, period_s, robot, first_at, 0))
        if self._started:  # the timer may be set for later than this robot is due
            self.stop()
            self._started = True
            self._schedule()

    def spread(
        self, robots: Iterable[SimRobot], period_s: float, start_at: float, seed: str = ""
    ) -> None:
        """Add `robots` with their phases spread evenly (in random order) over one period."""
        rs = list(robots)
        phases = [period_s * i / max(1, len(rs)) for i in range(len(rs))]
        random.Random(seed).shuffle(phases)
        for r, phase in zip(rs, phases, strict=True):
            self.add(r, period_s, start_at + phase)

    def start(self, until: float = float("inf")) -> None:
        """Send until wall-clock time `until` (the last sends are those due before it);
        keep-alives go on until `stop()`."""
        self._until = until
        self._started = True
        self._schedule()

    def stop(self) -> None:
        self._started = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        if not self._started:
            return
        if self._heap and self._heap[0][0] < self._until:
            delay = max(self.tick_s, self._heap[0][0] - time.time())
        else:  # nothing more to send: keep-alives only, until stopped
            delay = self.ping_every_s
        self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        now = time.time()
        heap = self._heap
        until = self._until
        while heap and heap[0][0] <= now:
            due, n, period, robot, first, k = heap[0]
            if due >= until:
                break
            robot.send_telemetry()
            # from the first due time, not the last: no drift over many periods
            heapq.heapreplace(heap, (first + (k + 1) * period, n, period, robot, first, k + 1))
            self.late_s = max(self.late_s, now - due)
        if now >= self._next_ping:
            mono = time.monotonic()
            for r in self.robots:
                r.link.ping_if_idle(mono)
            self._next_ping = now + self.ping_every_s
        self._schedule()


async def connect_all(
    robots: Iterable[SimRobot],
    concurrency: int = 32,
    attempts: int = 3,
    timeout_s: float = 30.0,
) -> list[str]:
    """Connect `robots` with at most `concurrency` handshakes in flight, each tried up
    to `attempts` times; returns the failures as "device: reason" (empty: all up)."""
    sem = asyncio.Semaphore(concurrency)
    failed: list[str] = []

    async def one(r: SimRobot) -> None:
        async with sem:
            for attempt in range(1, attempts + 1):
                try:
                    await r.connect(timeout_s)
                    return
                except (OSError, RuntimeError, TimeoutError) as exc:
                    r.link.close()
                    if attempt == attempts:
                        failed.append(f"{r.device_id}: {exc!r}")
                    else:
                        await asyncio.sleep(0.2 * attempt)

    await asyncio.gather(*(one(r) for r in robots))
    return failed
