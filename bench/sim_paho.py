"""The fleet simulator's earlier robots, kept as the baseline `bench/sim_cost.py`
measures against: one paho client per robot on the process's asyncio loop (paho's
external-loop socket hooks), a blocking TLS handshake per connect, one sleep per
telemetry message, the protobuf messages built anew each time.

Same identities, topics and messages as `bench.simrobot.SimRobot` (MQTT 3.1.1).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.simrobot import UPDATE_STATES, Pki
from protos import telemetry_pb2

__all__ = ["paho_robots"]


class PahoRobot:
    """One simulated robot: a paho client driven by the process's asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dev: str, pki: Pki, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from fleet.mqtt import topic

        self.loop, self.dev, self.port = loop, dev, port
        self.topics = {k: topic(dev, k) for k in ("telemetry", "events", "state", "updates")}
        self.connected = asyncio.Event()
        self.seq = int(time.time() * 1000)  # sequences never repeat across runs
        self.event_seq = self.seq + 10**10  # events have their own sequence space
        self.sent = 0
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=paho.MQTTv311)
        cert, key = pki.files(dev)
        c.tls_set(ca_certs=str(pki.ca), certfile=str(cert), keyfile=str(key))
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self.client = c
        self._misc: asyncio.Task[None] | None = None

    # paho's external-loop hooks: the loop watches the socket, paho does the protocol
    def _on_socket_open(self, client: Any, _u: Any, sock: Any) -> None:
        self.loop.add_reader(sock, client.loop_read)
        self._misc = self.loop.create_task(self._misc_loop())

    def _on_socket_close(self, _c: Any, _u: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _on_register_write(self, client: Any, _u: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        from paho.mqtt.enums import MQTTErrorCode

        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1.0)

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            return
        client.subscribe(self.topics["updates"], qos=1)
        st = telemetry_pb2.DeviceState(device_id=self.dev, online=True)
        st.at.FromDatetime(dt.datetime.now(dt.UTC))
        client.publish(self.topics["state"], st.SerializeToString(), qos=1, retain=True)
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        hint = telemetry_pb2.UpdateHint.FromString(msg.payload)
        self.loop.create_task(self._update(hint))

    async def _update(self, hint: telemetry_pb2.UpdateHint) -> None:
        """An agent on a no-op runtime: every state of the path reported, then COMMITTED."""
        for state in UPDATE_STATES:
            self.event_seq += 1
            ev = telemetry_pb2.Event(
                device_id=self.dev,
                sequence=self.event_seq,
                kind="update",
                state=state,
                reason_code="OK",
            )
            ev.bundle.name = hint.bundle_name
            ev.at.FromDatetime(dt.datetime.now(dt.UTC))
            self.client.publish(self.topics["events"], ev.SerializeToString(), qos=1)
            await asyncio.sleep(0)

    def connect(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=60)

    def send_telemetry(self) -> None:
        self.seq += 1
        b = telemetry_pb2.TelemetryBatch(device_id=self.dev, sequence=self.seq)
        p = b.points.add(loop_p50_ms=0.1, loop_p99_ms=0.2, ticks=50)
        p.at.FromNanoseconds(time.time_ns())
        self.client.publish(self.topics["telemetry"], b.SerializeToString(), qos=1)
        self.sent += 1


async def paho_robots(
    devs: list[str],
    pki: Pki,
    port: int,
    rate_hz: float,
    seconds: float,
    started: Callable[[float], Awaitable[float]],
    stopped: Callable[[], bool],
) -> dict[str, Any]:
    """Connect the robots, `await started(connect_s)` for the start time, send for
    `seconds`, stay up until `stopped()`; returns what `bench.fleet_scale` reports."""
    loop = asyncio.get_running_loop()
    t0 = time.time()
    robots = [PahoRobot(loop, d, pki, port) for d in devs]
    for i, r in enumerate(robots):
        r.connect()  # the TLS handshake is blocking in paho; the loop serves the rest
        if i % 20 == 19:
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in robots)), 600)
    start_at = await started(time.time() - t0)
    period = 1.0 / rate_hz
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds
    tick = 0
    offsets = [period * i / len(robots) for i in range(len(robots))]
    random.Random(devs[0]).shuffle(offsets)
    while start_at + tick * period < end:
        slot = start_at + tick * period
        order = sorted(range(len(robots)), key=offsets.__getitem__)
        for i in order:
            delay = slot + offsets[i] - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            robots[i].send_telemetry()
        tick += 1
    # Stay connected (answering hints) until the parent is done with this phase.
    while not stopped() and time.time() < end + 300:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)  # flush in-flight messages
    sent = {r.dev: (r.seq - r.sent, r.sent) for r in robots}
    for r in robots:
        r.client.disconnect()
    await asyncio.sleep(0.2)
    return {"sent": sent, "failed": [], "dropped": 0}
