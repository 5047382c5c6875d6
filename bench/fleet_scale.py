"""Fleet-scale simulator: thousands of lightweight robots against Mosquitto and the store.

Usage::

    python bench/fleet_scale.py                          # 2,000 robots, 1 Hz, 20 s
    python bench/fleet_scale.py --robots 10000 --seconds 300 --procs 4
    python bench/fleet_scale.py --robots 200 --seconds 10 --store sqlite

Each simulated robot is one real MQTT connection (TLS, its own device certificate from
a fleet CA made here, so the broker takes its client id and ACL identity from the
certificate), multiplexed with the others of its process on one asyncio loop (paho's
non-blocking socket API). A robot announces itself on ``state`` (retained), sends one
QoS 1 ``TelemetryBatch`` (one point stamped with its send time) every ``1/rate`` s on
``telemetry``, and answers an ``UpdateHint`` on ``updates`` as an agent on a no-op
runtime would: one ``update`` event per state of the update path up to COMMITTED.

Mosquitto runs with the configuration ``cloud broker-config`` writes (mTLS, identity
from the certificate, per-device ACLs, deep queues). Two consumers are measured on
the same offered load, one after the other:

- ``bare``: a subscriber that only decodes the send time and counts (the broker +
  client ceiling at this load);
- ``ingest``: `cloud.ingest.Ingest` under its own service identity into the store
  (PostgreSQL started here, or SQLite with ``--store sqlite``).

Lag = store commit time (bare: receive time) - send time. Lost = telemetry messages
sent whose (device, sequence) was never stored; duplicates = stored more than once.
Then, once the telemetry is in, the fan-out: one hint per robot through the broker
under the publisher identity; the time from the first hint to ingest storing the last
COMMITTED event is printed.

Prints a table and, last, one JSON line. The machine may be shared: compare the
ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import multiprocessing as mp
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_ingest import Lags, register
from cloud.broker_config import BrokerConfig, write_broker_config
from cloud.home import INGEST_IDENTITY, PUBLISHER_IDENTITY
from cloud.ingest import Decoded, Ingest, IngestSettings
from cloud.mqtt import CloudMqtt, CloudMqttSettings, Delivery
from cloud.pki import FleetCA
from cloud.store import Store
from protos import telemetry_pb2
from tests.servers import free_port, run_mosquitto, run_postgres

BARE_IDENTITY = "edgeflux-ingest-bare"
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


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path

    def files(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def make_pki(directory: Path, robots: list[str], services: tuple[str, ...]) -> Pki:
    """A fleet CA, the broker's server certificate, one certificate per robot and service."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = FleetCA.create()
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue_server("broker", ("localhost", "127.0.0.1")).write(directory, "server")
    for name in robots:
        ca.issue_device(name).write(directory, name)
    for name in services:
        ca.issue_service(name).write(directory, name)
    return Pki(directory, directory / "ca.crt")


@contextmanager
def fleet_broker(pki: Pki, directory: Path, robots: list[str]) -> Iterator[int]:
    """Mosquitto with the configuration `cloud broker-config` writes; yields its port."""
    port = free_port()
    cert, key = pki.files("server")
    cfg = BrokerConfig(
        ca=pki.ca,
        cert=cert,
        key=key,
        port=port,
        bind="127.0.0.1",
        ingest_identity=INGEST_IDENTITY,
        more_ingest_identities=(BARE_IDENTITY,),
        publisher_identity=PUBLISHER_IDENTITY,
        max_queued_messages=1_000_000,
        devices=tuple(robots),
    )
    conf, _ = write_broker_config(cfg, directory)
    with run_mosquitto(conf.read_text(), port=port):
        yield port


def service_settings(pki: Pki, port: int, identity: str) -> CloudMqttSettings:
    cert, key = pki.files(identity)
    return CloudMqttSettings(port=port, ca=pki.ca, cert=cert, key=key, client_id=identity)


# --------------------------------------------------------------------------- robots


class _Robot:
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


async def _robots_main(
    devs: list[str],
    pki: Pki,
    port: int,
    rate_hz: float,
    start_at: float,
    seconds: float,
    stop: Any,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    robots = [_Robot(loop, d, pki, port) for d in devs]
    for i, r in enumerate(robots):
        r.connect()  # the TLS handshake is blocking in paho; the loop serves the rest
        if i % 20 == 19:
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in robots)), 120)
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
    while not stop.is_set() and time.time() < end + 300:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)  # flush in-flight messages
    sent = {r.dev: (r.seq - r.sent, r.sent) for r in robots}
    for r in robots:
        r.client.disconnect()
    await asyncio.sleep(0.2)
    return sent


def _robot_process(
    devs: list[str],
    pki: Pki,
    port: int,
    rate_hz: float,
    start_at: float,
    seconds: float,
    stop: Any,
    q: Any,
) -> None:
    try:
        q.put(asyncio.run(_robots_main(devs, pki, port, rate_hz, start_at, seconds, stop)))
    except Exception as exc:  # reported, not swallowed: the parent fails the run
        q.put({"error": repr(exc)})


@dataclass
class Fleet:
    """The robot processes of one phase; `sent` maps device -> (first sequence - 1, count)."""

    procs: list[Any]
    q: Any
    stop: Any
    sent: dict[str, tuple[int, int]]

    def join(self, timeout_s: float) -> None:
        self.stop.set()
        errors = []
        for _ in self.procs:
            got = self.q.get(timeout=timeout_s)
            if "error" in got:
                errors.append(got["error"])
            else:
                self.sent.update(got)
        for p in self.procs:
            p.join(10)
        if errors:
            raise RuntimeError(f"robot processes failed: {errors}")


def start_fleet(
    devs: list[str],
    pki: Pki,
    port: int,
    procs: int,
    rate_hz: float,
    seconds: float,
    warmup_s: float,
) -> tuple[Fleet, float]:
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    stop = ctx.Event()
    start_at = time.time() + warmup_s
    ps = []
    for k in range(procs):
        part = devs[k::procs]
        if not part:
            continue
        p = ctx.Process(
            target=_robot_process,
            args=(part, pki, port, rate_hz, start_at, seconds, stop, q),
            daemon=True,
        )
        p.start()
        ps.append(p)
    return Fleet(ps, q, stop, {}), start_at


# --------------------------------------------------------------------------- consumers


class Received:
    """What a consumer saw: lags, (device, sequence) counts, COMMITTED events."""

    def __init__(self) -> None:
        self.lags = Lags()
        self.seen: Counter[tuple[str, int]] = Counter()
        self.committed: dict[str, float] = {}
        self.lock = threading.Lock()

    def telemetry(self, dev: str, seq: int, sent_at: float, done_at: float) -> None:
        self.lags.add(sent_at, done_at)
        with self.lock:
            self.seen[(dev, seq)] += 1

    def loss(self, sent: dict[str, tuple[int, int]]) -> tuple[int, int]:
        with self.lock:
            seen = dict(self.seen)
        lost = sum(
            1
            for d, (base, n) in sent.items()
            for s in range(base + 1, base + n + 1)
            if (d, s) not in seen
        )
        dups = sum(c - 1 for c in seen.values() if c > 1)
        return lost, dups


@contextmanager
def bare_consumer(pki: Pki, port: int, rec: Received) -> Iterator[None]:
    def on_message(d: Delivery) -> None:
        b = telemetry_pb2.TelemetryBatch.FromString(d.payload)
        if b.points:
            rec.telemetry(
                b.device_id, b.sequence, b.points[0].at.ToNanoseconds() / 1e9, time.time()
            )

    c = CloudMqtt(
        service_settings(pki, port, BARE_IDENTITY), on_message=on_message, clean_session=True
    )
    c.subscribe("edgeflux/v1/devices/+/telemetry")
    c.start()
    try:
        yield
    finally:
        c.stop()


@contextmanager
def ingest_consumer(pki: Pki, port: int, store: Store, rec: Received) -> Iterator[Ingest]:
    def committed(done: Any, at: float) -> None:
        for m in done:
            if not isinstance(m, Decoded):
                continue
            if m.telemetry:
                rec.telemetry(m.device_id, m.sequence, m.telemetry[0].at.timestamp(), at)
            elif m.event is not None and m.event.state == "COMMITTED":
                with rec.lock:
                    rec.committed.setdefault(m.device_id, at)

    ing = Ingest(
        store,
        service_settings(pki, port, INGEST_IDENTITY),
        IngestSettings(batch_max=1000, flush_ms=50),
        on_committed=committed,
    )
    ing.start()
    try:
        yield ing
    finally:
        ing.stop()


def _wait(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --------------------------------------------------------------------------- phases


@dataclass
class PhaseResult:
    consumer: str
    robots: int
    sent: int
    delivered: int
    lost: int
    duplicates: int
    msg_s: float
    lag_p50_s: float
    lag_p99_s: float
    fanout_s: float | None = None
    fanout_robots: int = 0


def run_phase(
    name: str, devs: list[str], pki: Pki, port: int, store: Store | None, args: Any
) -> PhaseResult:
    rec = Received()
    fanout = store is not None and args.fanout
    consumer = (
        ingest_consumer(pki, port, store, rec)
        if store is not None
        else bare_consumer(pki, port, rec)
    )
    expected = len(devs) * math.ceil(args.seconds * args.rate)
    with consumer:
        fleet, start_at = start_fleet(
            devs, pki, port, args.procs, args.rate, args.seconds, warmup_s=args.connect_s
        )
        # Telemetry lag first, on its own; then the fan-out, while the robots stay online.
        time.sleep(max(0.0, start_at + args.seconds - time.time()))
        _wait(lambda: len(rec.seen) >= expected, 60.0)
        fan_s = _fanout(pki, port, devs, rec) if fanout else None
        fleet.join(timeout_s=args.connect_s + args.seconds + 120)
        sent = sum(n for _, n in fleet.sent.values())
        _wait(lambda: len(rec.seen) >= sent, 15.0)
    lost, dups = rec.loss(fleet.sent)
    return PhaseResult(
        name,
        len(devs),
        sent,
        len(rec.seen),
        lost,
        dups,
        round(sent / args.seconds, 1),
        rec.lags.p(0.5),
        rec.lags.p(0.99),
        fan_s,
        len(rec.committed) if fanout else 0,
    )


def _fanout(pki: Pki, port: int, devs: list[str], rec: Received) -> float | None:
    from fleet.mqtt import topic

    pub = CloudMqtt(service_settings(pki, port, PUBLISHER_IDENTITY), clean_session=True)
    pub.start()
    t0 = time.time()
    for d in devs:
        hint = telemetry_pb2.UpdateHint(bundle_name="pendulum", sequence=2, generation=1)
        pub.publish(topic(d, "updates"), hint.SerializeToString(), wait_s=None)
    done = _wait(lambda: len(rec.committed) >= len(devs), 120)
    pub.stop()
    if not done:
        return None
    return max(rec.committed.values()) - t0


def run(args: Any) -> dict[str, Any]:
    devs = [f"sim-{i:05d}" for i in range(args.robots)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        pki = make_pki(
            Path(tmp) / "pki", devs, (INGEST_IDENTITY, BARE_IDENTITY, PUBLISHER_IDENTITY)
        )
        print(f"{args.robots} robot certificates in {time.time() - t0:.1f} s", flush=True)
        with fleet_broker(pki, Path(tmp) / "broker", devs) as port, _store(args, tmp) as store:
            register(store, devs)
            print(
                f"Mosquitto (broker-config, mTLS) on {port}; {args.procs} robot processes; "
                f"{args.rate:g} Hz for {args.seconds:g} s; store {args.store}",
                flush=True,
            )
            rows = [run_phase("bare", devs, pki, port, None, args)]
            rows.append(run_phase(f"ingest/{args.store}", devs, pki, port, store, args))
            # Read back from the store, not from the consumer's own counting.
            events = store.events(kind="update", limit=len(devs) * len(UPDATE_STATES) + 10)
            stored_commits = len({e.device_id for e in events if e.state == "COMMITTED"})
    return _report(rows, args, stored_commits)


@contextmanager
def _store(args: Any, tmp: str) -> Iterator[Store]:
    if args.store == "sqlite":
        store = Store.open(f"sqlite:///{tmp}/scale.db")
        try:
            yield store
        finally:
            store.close()
        return
    with run_postgres() as pg:
        store = Store.open(pg.create_database("scale"))
        try:
            yield store
        finally:
            store.close()


def _report(rows: list[PhaseResult], args: Any, stored_commits: int) -> dict[str, Any]:
    print()
    print(
        f"{'consumer':16s} {'robots':>7s} {'sent':>8s} {'stored':>8s} {'lost':>6s} "
        f"{'dups':>5s} {'msg/s':>9s} {'lag p50':>9s} {'lag p99':>9s}"
    )
    for r in rows:
        print(
            f"{r.consumer:16s} {r.robots:7d} {r.sent:8d} {r.delivered:8d} {r.lost:6d} "
            f"{r.duplicates:5d} {r.msg_s:9.1f} {r.lag_p50_s:8.3f}s {r.lag_p99_s:8.3f}s"
        )
    bare, ing = rows[0], rows[-1]
    delivered_rate = ing.delivered / args.seconds
    ceiling = bare.delivered / args.seconds or 1.0
    if ing.fanout_s is not None:
        print(
            f"\nfan-out: {ing.fanout_robots} robots, first hint -> last COMMITTED stored: "
            f"{ing.fanout_s:.2f} s"
        )
    elif args.fanout:
        print(f"\nfan-out: only {ing.fanout_robots}/{ing.robots} robots committed in 120 s")
    result = {
        "robots": ing.robots,
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "store": args.store,
        "sent": ing.sent,
        "lost": ing.lost,
        "duplicates": ing.duplicates,
        "ingest_msg_s": round(delivered_rate, 1),
        "bare_msg_s": round(ceiling, 1),
        # Both consumers face the same offered load: 1.0 means ingest kept up with the
        # bare consumer at this load, not that the broker's ceiling was reached.
        "ingest_ratio_vs_ceiling": round(delivered_rate / ceiling, 3),
        "lag_p50_s": round(ing.lag_p50_s, 3),
        "lag_p99_s": round(ing.lag_p99_s, 3),
        "bare_lag_p99_s": round(bare.lag_p99_s, 3),
        "fanout_robots": ing.fanout_robots,
        "fanout_s": None if ing.fanout_s is None else round(ing.fanout_s, 3),
        "stored_committed_devices": stored_commits,
        "procs": args.procs,
    }
    print(json.dumps(result))
    return result


def parse(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robots", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=1.0, help="telemetry messages/s per robot")
    ap.add_argument("--procs", type=int, default=2, help="robot processes")
    ap.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument(
        "--connect-s",
        type=float,
        default=15.0,
        help="time allowed for every robot to connect before the load starts",
    )
    ap.add_argument("--no-fanout", dest="fanout", action="store_false")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse(argv))


if __name__ == "__main__":
    main()
