"""Simulated robots for rollout scenarios: the fleet simulator's robots (one real mTLS
MQTT connection each, `bench.simrobot`) with a behaviour that depends on the
bundle they run, and a switch that waits while the scenario holds it.

Each robot reports telemetry counters every `period_s` (50 Hz ticks and the deadline
misses of the bundle it runs) and answers an `UpdateHint` as an agent on a no-op
runtime: the states of the update path up to COMMITTED, after which it runs the hinted
bundle. The scenario sets, per bundle version, a deadline-miss rate for all robots or
for chosen ones; per robot, a number of first tries that fail with a transient reason
(a failed download), and a hold (the reason and detail the agent reports while an update
lock or a closed maintenance window keeps its switch waiting: state HELD).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.simrobot import UPDATE_STATES, Pki, RobotLoop, SimRobot, connect_all
from protos import telemetry_pb2

__all__ = ["Behaviour", "ScenarioRobot", "SimFleet"]

TICK_HZ = 50
BASE_MISS_RATE = 0.0  # a healthy robot misses no deadline: the figures stay exact


@dataclass
class Behaviour:
    """What the simulated robots do; the test changes it while they run."""

    versions: dict[int, str] = field(default_factory=dict)  # bundle sequence -> version
    # version -> deadline-miss rate, for the robots named (None: every robot)
    miss_rates: dict[str, tuple[float, frozenset[str] | None]] = field(default_factory=dict)
    fail_tries: dict[str, int] = field(default_factory=dict)  # robot -> first tries that fail
    # robot -> (reason, detail) that holds its switch, as the agent's update lock or a
    # closed maintenance window does: it stages, reports HELD, and switches once released
    holds: dict[str, tuple[str, str]] = field(default_factory=dict)
    hints: list[tuple[float, str, int, int]] = field(default_factory=list)  # at, robot, seq, gen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def miss_rate(self, device: str, version: str) -> float:
        with self.lock:
            rate, who = self.miss_rates.get(version, (BASE_MISS_RATE, None))
        return rate if who is None or device in who else BASE_MISS_RATE

    def hints_for(self, device: str) -> list[tuple[float, int, int]]:
        with self.lock:
            return [(at, s, g) for at, d, s, g in self.hints if d == device]


class ScenarioRobot(SimRobot):
    """A simulated robot whose telemetry and update answers follow the `Behaviour`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dev: str,
        pki: Pki,
        port: int,
        behaviour: Behaviour,
        active: tuple[str, str, int],
        period_s: float,
    ) -> None:
        super().__init__(loop, dev, pki, port)
        self.behaviour = behaviour
        self.active = active  # name, version, sequence
        self.state = "COMMITTED"
        self.period_s = period_s
        self.ticks = 0
        self.misses = 0
        self._owed = 0.0
        self._handled: set[tuple[int, int]] = set()  # (sequence, generation) answered
        self._tries: Counter[int] = Counter()  # tries per bundle sequence
        self.point.loop_p50_ms, self.point.loop_p99_ms = 0.4, 1.2

    def before_telemetry(self) -> None:
        n = TICK_HZ * self.period_s
        self._owed += n * self.behaviour.miss_rate(self.device_id, self.active[1])
        self.ticks += int(n)
        missed = int(self._owed)
        self._owed -= missed
        self.misses += missed
        p = self.point
        p.ticks, p.deadline_misses = self.ticks, self.misses
        p.active_bundle.name, p.active_bundle.version, p.active_bundle.sequence = self.active
        p.update_state = self.state

    async def on_hint(self, hint: telemetry_pb2.UpdateHint) -> None:
        with self.behaviour.lock:
            self.behaviour.hints.append(
                (time.time(), self.device_id, hint.sequence, hint.generation)
            )
        key = (hint.sequence, hint.generation)
        if key in self._handled:  # the same desired state hinted again
            return
        self._handled.add(key)
        version = self.behaviour.versions.get(hint.sequence, "")
        ref = (hint.bundle_name, version, hint.sequence)
        self._tries[hint.sequence] += 1
        if self._tries[hint.sequence] <= self.behaviour.fail_tries.get(self.device_id, 0):
            for state in ("REFRESHING", "DOWNLOADING"):
                self.emit_event(state, ref, "")
                await asyncio.sleep(0.01)
            self.state = "FAILED"
            self.emit_event("FAILED", ref, "DOWNLOAD_FAILED", "connection reset while downloading")
            return
        for state in UPDATE_STATES:
            if state == "SWITCHING":
                await self._held(ref)
            self.state = state
            if state == "COMMITTED":
                self.active = ref
            self.emit_event(state, ref, "")
            await asyncio.sleep(0.01)

    async def _held(self, ref: tuple[str, str, int]) -> None:
        with self.behaviour.lock:
            hold = self.behaviour.holds.get(self.device_id)
        if hold is None:
            return
        self.state = "HELD"
        self.emit_event("HELD", ref, *hold)
        while True:
            with self.behaviour.lock:
                if self.device_id not in self.behaviour.holds:
                    return
            await asyncio.sleep(0.1)


class SimFleet:
    """Robots on one asyncio loop in a thread; certificates under `cert_dir` (`<id>.crt`)."""

    def __init__(
        self,
        cert_dir: Path,
        ca: Path,
        port: int,
        behaviour: Behaviour,
        active: tuple[str, str, int],
        period_s: float = 0.5,
    ) -> None:
        self.pki = Pki(cert_dir, ca)
        self.port = port
        self.behaviour = behaviour
        self.initial = active
        self.period_s = period_s
        self.robots: dict[str, ScenarioRobot] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="simfleet", daemon=True)
        self._thread.start()
        self._ticks = RobotLoop(self.loop, tick_s=0.01)
        self.loop.call_soon_threadsafe(self._ticks.start)

    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, devices: list[str], timeout: float = 60.0) -> None:
        """Connect these robots (each with its own certificate) and wait for all."""

        async def connect() -> None:
            new = [
                ScenarioRobot(
                    self.loop, d, self.pki, self.port, self.behaviour, self.initial, self.period_s
                )
                for d in devices
            ]
            failed = await connect_all(new, timeout_s=timeout)
            if failed:
                raise RuntimeError(f"simulated robots did not connect: {failed}")
            first = time.time() + self.period_s
            for r in new:
                self.robots[r.device_id] = r
                self._ticks.add(r, self.period_s, first)

        self._run(connect(), timeout + 10)

    def active(self, device: str) -> tuple[str, str, int]:
        return self.robots[device].active

    def stop(self) -> None:
        async def down() -> None:
            self._ticks.stop()
            for r in self.robots.values():
                r.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            self._run(down(), 20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
