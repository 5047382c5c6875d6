"""The simulated robot's own MQTT client (bench/simmqtt.py, bench/simrobot.py) against
the Mosquitto that `cloud broker-config` configures: the certificate is the identity,
QoS 1 publishes are settled by PUBACK, subscriptions are answered by SUBACK, the ACL
refuses what it refuses for any client, and the payloads are the agent encoder's."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.fleet_scale import BARE_IDENTITY, fleet_broker
from bench.simcerts import fleet_pki
from bench.simmqtt import MqttLink, client_context
from bench.simrobot import (
    HOST,
    UPDATE_STATES,
    Pki,
    RobotLoop,
    SimRobot,
    TelemetryEncoder,
    connect_all,
)
from cloud.home import PUBLISHER_IDENTITY
from cloud.pki import FleetCA
from fleet.mqtt import topic
from fleet.telemetry import make_point
from protos import runtime_control_pb2, telemetry_pb2
from tests.servers import missing_service, mosquitto_binary

pytestmark = [pytest.mark.services]
ROBOTS = ["sim-a", "sim-b", "sim-c"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, int]]:
    if mosquitto_binary() is None:
        missing_service("mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("simrobot")
    pki, _ = fleet_pki(tmp / "pki", ROBOTS, (BARE_IDENTITY, PUBLISHER_IDENTITY), procs=2)
    with fleet_broker(pki, tmp / "broker", ROBOTS) as port:
        yield pki, port


def run(coro: object, timeout: float = 60.0) -> object:
    async def main() -> object:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    return asyncio.run(main())


def service(
    loop: asyncio.AbstractEventLoop, pki: Pki, port: int, name: str, got: list[tuple[str, bytes]]
) -> MqttLink:
    cert, key = pki.files(name)
    return MqttLink(
        loop,
        name,
        client_context(pki.ca, cert, key),
        "127.0.0.1",
        port,
        on_message=lambda t, p: got.append((t, p)),
    )


async def until(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
def test_a_robot_publishes_what_the_agent_encodes_and_answers_a_hint_up_to_committed(
    fleet: tuple[Pki, int], mqtt5: bool
) -> None:
    pki, port = fleet

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[tuple[str, bytes]] = []
        bare = service(loop, pki, port, BARE_IDENTITY, got)
        await bare.connect()
        assert await bare.subscribe("edgeflux/v1/devices/+/telemetry") == 1
        assert await bare.subscribe("edgeflux/v1/devices/+/events") == 1
        robot = SimRobot(loop, "sim-a", pki, port, mqtt5=mqtt5)
        assert not await connect_all([robot])
        ticks = RobotLoop(loop, tick_s=0.01)
        ticks.spread([robot], 0.05, time.time())
        ticks.start(until=time.time() + 0.5)
        await until(lambda: robot.sent >= 5 and not robot.link.inflight)
        ticks.stop()
        assert robot.link.acked >= robot.sent + 1  # each telemetry and the state
        assert robot.link.refused_publishes == 0
        await until(lambda: sum(t.endswith("/telemetry") for t, _ in got) == robot.sent)
        tele = [telemetry_pb2.TelemetryBatch.FromString(p) for t, p in got if "tele" in t]
        assert [b.sequence for b in tele] == list(range(robot.first_seq + 1, robot.seq + 1))
        assert {b.device_id for b in tele} == {"sim-a"}
        sent_at = tele[-1].points[0].at.ToNanoseconds() / 1e9
        assert abs(time.time() - sent_at) < 5

        pub = service(loop, pki, port, PUBLISHER_IDENTITY, [])
        await pub.connect()
        hint = telemetry_pb2.UpdateHint(bundle_name="pendulum", sequence=7, generation=1)
        pub.publish(topic("sim-a", "updates"), hint.SerializeToString(), qos=1)
        await until(lambda: sum(t.endswith("/events") for t, _ in got) == len(UPDATE_STATES))
        events = [telemetry_pb2.Event.FromString(p) for t, p in got if t.endswith("/events")]
        assert [e.state for e in events] == list(UPDATE_STATES)
        assert {(e.device_id, e.kind, e.bundle.name, e.bundle.sequence) for e in events} == {
            ("sim-a", "update", "pendulum", 7)
        }
        assert robot.hints == 1
        for link in (pub, bare):
            link.close()
        robot.close()

    run(main())


def test_the_telemetry_payload_is_byte_for_byte_the_agents_encoding() -> None:
    """Differential: the template re-serialised with a new sequence and time equals a
    batch built from scratch as the agent's batcher builds it."""
    enc = TelemetryEncoder("sim-a")
    metrics = runtime_control_pb2.LoopMetrics(latency_p50_ms=0.1, latency_p99_ms=0.2, ticks=50)
    cases = [(1, 1_700_000_000_000_000_000), (2**40, 1_765_432_109_876_543_210)]
    for seq, at_ns in [*cases, (5, time.time_ns())]:
        got = enc.payload(seq, at_ns)
        at = dt.datetime.fromtimestamp(at_ns // 1000 / 1e6, dt.UTC)
        batch = telemetry_pb2.TelemetryBatch(device_id="sim-a", sequence=seq)
        batch.points.extend([make_point(at, metrics, HOST)])
        assert got == batch.SerializeToString()


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
def test_the_broker_refuses_another_robots_topics_and_a_foreign_certificate(
    fleet: tuple[Pki, int], tmp_path: Path, mqtt5: bool
) -> None:
    pki, port = fleet

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cert, key = pki.files("sim-b")
        # The client id asked for is ignored: the certificate says who this is.
        ctx = client_context(pki.ca, cert, key)
        link = MqttLink(loop, "sim-c", ctx, "127.0.0.1", port, mqtt5=mqtt5)
        await link.connect()
        assert await link.subscribe(topic("sim-b", "updates")) == 1
        assert await link.subscribe(topic("sim-c", "updates")) >= 0x80
        got: list[tuple[str, bytes]] = []
        bare = service(loop, pki, port, BARE_IDENTITY, got)
        await bare.connect()
        assert await bare.subscribe("edgeflux/v1/devices/+/telemetry") == 1
        link.publish(topic("sim-c", "telemetry"), b"not mine", qos=1)
        link.publish(topic("sim-b", "telemetry"), b"mine", qos=1)
        await until(lambda: not link.inflight)
        await until(lambda: bool(got))
        await asyncio.sleep(0.2)
        assert got == [(topic("sim-b", "telemetry"), b"mine")]
        # MQTT 5 says why in the PUBACK; MQTT 3.1.1 has no way to, the broker drops it.
        assert link.refused_publishes == (1 if mqtt5 else 0)
        link.ping_if_idle(time.monotonic() + 3600)
        await until(lambda: link.pongs == 1)
        link.close()
        bare.close()

        other = FleetCA.create(name="some other CA")
        other.issue_device("sim-a").write(tmp_path, "sim-a")
        foreign = SimRobot(loop, "sim-a", Pki(tmp_path, pki.ca), port, mqtt5=mqtt5)
        failed = await connect_all([foreign], attempts=1, timeout_s=10)
        assert len(failed) == 1 and failed[0].startswith("sim-a: "), failed

    run(main())


def test_certificates_are_kept_and_only_missing_ones_issued(tmp_path: Path) -> None:
    pki, issued = fleet_pki(tmp_path, ["sim-1", "sim-2"], (BARE_IDENTITY,), procs=2)
    assert issued == 4  # server, two robots, one service
    before = pki.files("sim-1")[0].read_bytes()
    pki2, issued2 = fleet_pki(tmp_path, ["sim-1", "sim-2", "sim-3"], (BARE_IDENTITY,), procs=2)
    assert issued2 == 1 and pki2 == pki
    assert pki.files("sim-1")[0].read_bytes() == before
    ca = FleetCA.load(tmp_path / "ca.crt", tmp_path / "ca.key.enc", b"edgeflux-benchmark-fleet-ca")
    from cryptography import x509

    for n in ("sim-1", "sim-3"):
        c = x509.load_pem_x509_certificate(pki.files(n)[0].read_bytes())
        assert c.issuer == ca.cert.subject


# ---------------------------------------------------------------- pure logic, no broker


class _Chunks:
    """A socket whose reads return the given chunks; writes are recorded."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.written = bytearray()

    def recv(self, _n: int) -> bytes:
        return self.chunks.pop(0)

    def pending(self) -> int:
        return 0

    def send(self, data: bytes) -> int:
        self.written += data
        return len(data)


def _stream(mqtt5: bool) -> bytes:
    props = b"\x00" if mqtt5 else b""
    out = b"\x40\x02\x00\x01"  # PUBACK 1
    out += b"\x40\x04\x00\x02\x87\x00" if mqtt5 else b"\x40\x02\x00\x02"  # refused in MQTT 5
    out += b"\x90" + bytes((3 + len(props),)) + b"\x00\x03" + props + b"\x01"  # SUBACK 3
    body = b"\x00\x05a/b/c" + b"\x00\x09" + props + b"payload" * 40  # PUBLISH QoS 1, 2-byte length
    out += b"\x32" + bytes((len(body) & 0x7F | 0x80, len(body) >> 7)) + body
    out += b"\xd0\x00"
    return out


@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12), mqtt5=st.booleans())
def test_packets_split_anywhere_across_reads_are_read_the_same(
    cuts: list[int], mqtt5: bool
) -> None:
    stream = _stream(mqtt5)
    at = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[i:j] for i, j in zip([0, *at], [*at, len(stream)], strict=True)]
    loop = asyncio.new_event_loop()
    try:
        got: list[tuple[str, bytes]] = []
        link = MqttLink(loop, "x", client_context_stub(), "h", 1, mqtt5=mqtt5)
        link.on_message = lambda t, p: got.append((t, p))
        sock = _Chunks(list(chunks))
        link.sock = sock  # type: ignore[assignment]
        link.connected = True
        link.inflight = {1, 2}
        sub: asyncio.Future[list[int]] = loop.create_future()
        link._subacks[3] = sub
        for _ in chunks:
            link._on_readable()
        assert link.inflight == set() and link.acked == 2
        assert link.refused_publishes == (1 if mqtt5 else 0)
        assert sub.result() == [1]
        assert got == [("a/b/c", b"payload" * 40)]
        assert bytes(sock.written) == b"\x40\x02\x00\x09"  # the PUBACK of the delivery
        assert link.pongs == 1 and not link._rx
    finally:
        loop.close()


def client_context_stub() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class _Counting:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name, self.log = name, log

    def send_telemetry(self) -> None:
        self.log.append((self.name, time.time()))

    @property
    def link(self) -> _Counting:
        return self

    def ping_if_idle(self, _now: float) -> bool:
        self.log.append((f"ping {self.name}", time.time()))
        return False


def test_one_timer_sends_each_robot_once_a_period_until_the_end() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []
        ticks = RobotLoop(loop, tick_s=0.005, ping_every_s=0.05)
        start = time.time() + 0.05
        ticks.spread([_Counting(f"r{i}", log) for i in range(20)], 0.1, start)  # type: ignore[misc]
        ticks.start(until=start + 0.5)
        await asyncio.sleep(0.1)
        ticks.add(_Counting("late", log), 0.1, time.time())  # type: ignore[arg-type]
        await asyncio.sleep(0.6)
        ticks.stop()
        return log

    log = asyncio.run(main())
    per = Counter(name for name, _ in log)
    assert all(per[f"r{i}"] == 5 for i in range(20)), per
    assert 3 <= per["late"] <= 5, per
    # keep-alives went on after the last send (start + 0.5), not just while sending
    last_send = max(at for name, at in log if not name.startswith("ping"))
    assert any(name == "ping r0" and at > last_send + 0.1 for name, at in log), log[-5:]
