"""Fleet-scale simulator: thousands of lightweight robots against Mosquitto and the store.

Usage::

    python bench/fleet_scale.py                          # 2,000 robots, 1 Hz, 20 s
    python bench/fleet_scale.py --robots 10000 --seconds 300 --procs 2 --ingest-replicas 3 \
        --no-fanout --cert-cache ~/.cache/edgeflux-fleet-certs
    python bench/fleet_scale.py --robots 1000 --seconds 10 --ladder 1,2,4,8,16 --no-fanout
    python bench/fleet_scale.py --robots 200 --seconds 10 --store sqlite

Each simulated robot (`bench.simrobot.SimRobot`) is one real MQTT connection (TLS, its
own device certificate from a fleet CA made here, so the broker takes its client id and
ACL identity from the certificate), multiplexed with the others of its process on one
asyncio loop through a small MQTT client of its own (`bench.simmqtt`). A robot
subscribes to ``updates``, announces itself on ``state`` (retained, offline will), sends
one QoS 1 ``TelemetryBatch`` (one point as the agent's encoder makes it, stamped with its
send time) every ``1/rate`` s on ``telemetry``, and answers an ``UpdateHint`` on
``updates`` as an agent on a no-op runtime would: one ``update`` event per state of the
update path up to COMMITTED. One timer per process sends for every robot that is due.
``--client paho`` runs the earlier robots instead (one paho client each), for comparison;
`bench/sim_cost.py` measures both.

Certificates take a while to make for 10,000 robots: ``--cert-cache DIR`` keeps them
(made in parallel processes) for the next run. The load starts once every robot is
connected (``--connect-s`` bounds the wait); each row says how long connecting took and
how much CPU the robot processes used per message.

Mosquitto runs with the configuration ``cloud broker-config`` writes (mTLS, identity
from the certificate, per-device ACLs, deep queues). The consumers are measured one
after the other:

- ``bare``: a subscriber that only decodes the send time and counts (the broker +
  client ceiling). With ``--ladder`` it runs at each rate in turn until it stops
  keeping up (loss, under 95% of the offered rate, or lag p99 of 2 s or more); its
  best msg/s is the ceiling;
- ``ingest``: `cloud.ingest.Ingest` into the store (PostgreSQL started here, or
  SQLite with ``--store sqlite``), at the rate where the bare consumer peaked, once
  per ``--ingest-replicas`` count: that many replica processes, each with its own
  service identity, splitting the load through the shared subscription when more
  than one.

msg/s = messages the consumer got through / (its last one - the start of the load):
a consumer that falls behind and catches up later scores below the offered rate.

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
import json
import math
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_ingest import Lags, register
from bench.sim_paho import paho_robots
from bench.simcerts import fleet_pki
from bench.simrobot import UPDATE_STATES, Pki, RobotLoop, SimRobot, connect_all
from cloud.broker_config import BrokerConfig, write_broker_config
from cloud.home import INGEST_IDENTITY, PUBLISHER_IDENTITY
from cloud.ingest import Ingest, IngestSettings
from cloud.mqtt import CloudMqtt, CloudMqttSettings, Delivery
from cloud.store import Store
from protos import telemetry_pb2
from tests.servers import free_port, run_mosquitto, run_postgres

BARE_IDENTITY = "edgeflux-ingest-bare"
MAX_REPLICAS = 8


def replica_identities(n: int) -> list[str]:
    """The ingest identities of `n` replicas: the plane's own for one, -1..-n for more."""
    return [INGEST_IDENTITY] if n == 1 else [f"{INGEST_IDENTITY}-{i}" for i in range(1, n + 1)]


ALL_REPLICAS = tuple(replica_identities(MAX_REPLICAS))


def fleet_devices(n: int) -> list[str]:
    """The simulated robots' device ids."""
    return [f"sim-{i:05d}" for i in range(n)]


def fleet_services() -> tuple[str, ...]:
    """The service identities a run uses (ingest replicas, bare consumer, publisher)."""
    return (INGEST_IDENTITY, BARE_IDENTITY, PUBLISHER_IDENTITY, *ALL_REPLICAS)


BROKER_PID = [0]
CONSUMER_PIDS: list[int] = []
DB_PID = [0]


# --------------------------------------------------------------------------- identities


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
        more_ingest_identities=(BARE_IDENTITY, *ALL_REPLICAS),
        publisher_identity=PUBLISHER_IDENTITY,
        max_queued_messages=1_000_000,
        devices=tuple(robots),
    )
    conf, _ = write_broker_config(cfg, directory)
    with run_mosquitto(conf.read_text(), port=port) as broker:
        BROKER_PID[0] = broker.proc.pid
        yield port


def service_settings(pki: Pki, port: int, identity: str) -> CloudMqttSettings:
    cert, key = pki.files(identity)
    return CloudMqttSettings(port=port, ca=pki.ca, cert=cert, key=key, client_id=identity)


# --------------------------------------------------------------------------- robots


async def _lean_robots(
    devs: list[str],
    pki: Pki,
    port: int,
    rate_hz: float,
    seconds: float,
    started: Callable[[float], Awaitable[float]],
    stopped: Callable[[], bool],
    concurrency: int,
) -> dict[str, Any]:
    """`bench.simrobot` robots: connect them all, `await started(connect_s)` for the
    start time, send for `seconds` from one timer, stay up (answering hints) until
    `stopped()`, then wait for the last PUBACKs and disconnect."""
    loop = asyncio.get_running_loop()
    t0 = time.time()
    robots = [SimRobot(loop, d, pki, port) for d in devs]
    failed = await connect_all(robots, concurrency=concurrency)
    start_at = await started(time.time() - t0)
    ticks = RobotLoop(loop)
    ticks.spread(robots, 1.0 / rate_hz, start_at, seed=devs[0])
    end = start_at + seconds
    ticks.start(until=end)
    while not stopped() and time.time() < end + 300:
        await asyncio.sleep(0.1)
    ticks.stop()
    deadline = time.time() + 10
    while any(r.link.inflight for r in robots) and time.time() < deadline:
        await asyncio.sleep(0.05)
    sent = {r.device_id: (r.first_seq, r.sent) for r in robots}
    dropped = [f"{r.device_id}: {r.dropped}" for r in robots if r.dropped]
    for r in robots:
        r.close()
    return {
        "sent": sent,
        "failed": failed,
        "dropped": len(dropped),
        "dropped_examples": dropped[:5],
        "late_s": ticks.late_s,
    }


def _robot_process(
    client: str,
    devs: list[str],
    pki: Pki,
    port: int,
    rate_hz: float,
    seconds: float,
    concurrency: int,
    start_at: Any,
    stop: Any,
    q: Any,
) -> None:
    async def started(connect_s: float) -> float:
        q.put(("up", os.getpid(), connect_s))
        while start_at.value == 0.0:
            if stop.is_set():
                raise RuntimeError("stopped before the load started")
            await asyncio.sleep(0.05)
        return float(start_at.value)

    try:
        if client == "paho":
            got = asyncio.run(paho_robots(devs, pki, port, rate_hz, seconds, started, stop.is_set))
        else:
            got = asyncio.run(
                _lean_robots(devs, pki, port, rate_hz, seconds, started, stop.is_set, concurrency)
            )
        q.put(("done", got))
    except Exception as exc:  # reported, not swallowed: the parent fails the run
        q.put(("error", repr(exc)))


@dataclass
class Fleet:
    """The robot processes of one phase; `sent` maps device -> (first sequence - 1, count)."""

    procs: list[Any]
    q: Any
    stop: Any
    sent: dict[str, tuple[int, int]]
    connect_s: float = 0.0
    """From starting the processes to the last robot connected."""
    connect_load: float = 0.0
    """The 1-minute load average when the last robot connected."""
    late_s: float = 0.0
    dropped: int = 0
    """Robots whose connection ended before the phase did (reported, not fatal)."""
    dropped_examples: list[str] = field(default_factory=list)

    def join(self, timeout_s: float) -> None:
        self.stop.set()
        errors = []
        for _ in self.procs:
            kind, got = self.q.get(timeout=timeout_s)
            if kind == "error":
                errors.append(got)
                continue
            self.sent.update(got["sent"])
            self.late_s = max(self.late_s, got.get("late_s", 0.0))
            self.dropped += got["dropped"]
            self.dropped_examples += got.get("dropped_examples", [])
            if got["failed"]:
                errors.append(f"{len(got['failed'])} robots failed: {got['failed'][:5]}")
        for p in self.procs:
            p.join(10)
        if errors:
            raise RuntimeError(f"robot processes failed: {errors}")


def start_fleet(
    devs: list[str],
    pki: Pki,
    port: int,
    args: Any,
    rate_hz: float,
) -> tuple[Fleet, float]:
    """Start the robot processes, wait until every robot is connected (at most
    `args.connect_s`), then give them a start time 1 s ahead; returns it."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    stop = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    ps = []
    t0 = time.time()
    for k in range(args.procs):
        part = devs[k :: args.procs]
        if not part:
            continue
        p = ctx.Process(
            target=_robot_process,
            args=(
                args.client,
                part,
                pki,
                port,
                rate_hz,
                args.seconds,
                args.connect_concurrency,
                start_at,
                stop,
                q,
            ),
            daemon=True,
        )
        p.start()
        ps.append(p)
    fleet = Fleet(ps, q, stop, {})
    up = 0
    while up < len(ps):
        try:
            kind, *rest = q.get(timeout=max(0.1, t0 + args.connect_s - time.time()))
        except queue.Empty:
            stop.set()
            raise RuntimeError(
                f"robots not connected within --connect-s {args.connect_s:g}"
            ) from None
        if kind != "up":
            stop.set()
            raise RuntimeError(f"a robot process failed while connecting: {rest}")
        up += 1
    fleet.connect_s = time.time() - t0
    fleet.connect_load = os.getloadavg()[0]
    start_at.value = time.time() + 1.0
    return fleet, start_at.value


# --------------------------------------------------------------------------- CPU use


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


class CpuMeter:
    """Cores used by each part of the run (robots, broker, consumer, database) over a
    phase: where the 2 shared cores went, to say which part is the limit."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._t0 = 0.0
        self.wall_s = 0.0
        self.used_s: dict[str, float] = {}
        self._start: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self._t0 = time.time()
        self._start = {g: {p: _cpu_s(p) for p in pids()} for g, pids in self.groups.items()}

    def cores(self) -> dict[str, float]:
        """Cores used per group since `start` (also kept, as CPU seconds, in `used_s`)."""
        wall = self.wall_s = max(1e-6, time.time() - self._t0)
        out = {}
        for g, pids in self.groups.items():
            before = self._start.get(g, {})
            self.used_s[g] = sum(_cpu_s(p) - before.get(p, 0.0) for p in pids())
            out[g] = round(self.used_s[g] / wall, 2)
        return out


# --------------------------------------------------------------------------- consumers


class Received:
    """What a consumer saw: lags, (device, sequence) counts, COMMITTED events."""

    def __init__(self) -> None:
        self.lags = Lags()
        self.seen: Counter[tuple[str, int]] = Counter()
        self.committed: dict[str, float] = {}
        self.last_done = 0.0
        self.lock = threading.Lock()

    def telemetry(self, dev: str, seq: int, sent_at: float, done_at: float) -> None:
        self.lags.add(sent_at, done_at)
        with self.lock:
            self.seen[(dev, seq)] += 1
            self.last_done = max(self.last_done, done_at)

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


def _ingest_replica(
    pki: Pki, port: int, url: str, identity: str, shared: bool, flush_ms: float, q: Any, stop: Any
) -> None:
    """One ingest replica process: `cloud.ingest.Ingest` into the store at `url`; what
    it committed goes back to the parent as (device, sequence, sent at, committed at)."""
    store = Store.open(url)
    counters: dict[str, int] = {}
    try:

        def committed(done: Any, at: float) -> None:
            rows: list[tuple[str, str, int, float, float]] = []
            for m in done:
                if m.telemetry:
                    rows.append(("t", m.device_id, m.sequence, m.telemetry[0].at.timestamp(), at))
                elif m.event is not None and m.event.state == "COMMITTED":
                    rows.append(("c", m.device_id, m.sequence, at, at))
            if rows:
                q.put(rows)

        ing = Ingest(
            store,
            service_settings(pki, port, identity),
            IngestSettings(
                batch_max=2000,
                flush_ms=flush_ms,
                subscription="shared" if shared else "exclusive",
            ),
            on_committed=committed,
        )
        ing.start()
        if not _wait(ing.is_connected, 60):
            q.put(("error", f"{identity} did not connect"))
            return
        q.put(("ready", identity))
        stop.wait()
        ing.stop()
        counters = dict(ing.counters)
    except Exception as exc:  # reported, not swallowed: the parent fails the run
        q.put(("error", f"{identity}: {exc!r}"))
    finally:
        store.close()
        q.put(("done", identity, counters))


@contextmanager
def ingest_consumer(
    pki: Pki, port: int, url: str, rec: Received, replicas: int, flush_ms: float = 50.0
) -> Iterator[dict[str, dict[str, int]]]:
    """`replicas` ingest processes (shared subscription when more than one); yields the
    replicas' counters, filled in when they stop."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    stop = ctx.Event()
    names = replica_identities(replicas)
    procs = [
        ctx.Process(
            target=_ingest_replica,
            args=(pki, port, url, n, replicas > 1, flush_ms, q, stop),
            daemon=True,
        )
        for n in names
    ]
    for p in procs:
        p.start()
    CONSUMER_PIDS[:] = [p.pid for p in procs if p.pid is not None]
    counters: dict[str, dict[str, int]] = {}
    ready: set[str] = set()
    errors: list[str] = []
    done = threading.Event()

    def drain() -> None:
        finished = 0
        while finished < len(procs):
            item = q.get()
            if isinstance(item, list):
                for kind, dev, seq, sent_at, at in item:
                    if kind == "t":
                        rec.telemetry(dev, seq, sent_at, at)
                    else:
                        with rec.lock:
                            rec.committed.setdefault(dev, at)
            elif item[0] == "ready":
                ready.add(item[1])
            elif item[0] == "error":
                errors.append(item[1])
            elif item[0] == "done":
                counters[item[1]] = item[2]
                finished += 1
        done.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    # A shared subscription holds nothing for its group until a member subscribed.
    if not _wait(lambda: len(ready) == len(procs) or bool(errors), 120) or errors:
        stop.set()
        raise RuntimeError(f"ingest replicas did not start: {errors or sorted(ready)}")
    try:
        yield counters
    finally:
        stop.set()
        done.wait(60)
        for p in procs:
            p.join(10)
        if errors:
            raise RuntimeError(f"ingest replicas failed: {errors}")


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
    rate_hz: float
    sent: int
    delivered: int
    lost: int
    duplicates: int
    offered_msg_s: float
    """What the robots sent per second of the phase (below robots x rate: the simulator
    itself could not keep up)."""
    msg_s: float
    """Messages the consumer got through per second: delivered / (last one - start)."""
    lag_p50_s: float
    lag_p99_s: float
    loadavg_1m: float
    fanout_s: float | None = None
    fanout_robots: int = 0
    counters: dict[str, dict[str, int]] | None = None
    cores: dict[str, float] | None = None
    """Cores each part used during the load (robots, broker, consumer, db)."""
    robot_us_per_msg: float = 0.0
    """CPU the robot processes used during the load per telemetry message sent."""
    connect_s: float = 0.0
    """From starting the robot processes to every robot connected."""
    connect_load: float = 0.0
    late_s: float = 0.0
    """The most a robot's telemetry was sent after its due time."""
    robots_dropped: int = 0
    """Robots whose connection the broker ended during the phase."""

    def kept_up(self) -> bool:
        """Everything delivered, at the rate it was sent, with p99 lag under 2 s."""
        return self.lost == 0 and self.msg_s >= 0.95 * self.offered_msg_s and self.lag_p99_s < 2.0


def run_phase(
    name: str,
    devs: list[str],
    pki: Pki,
    port: int,
    store_url: str | None,
    args: Any,
    rate: float,
    replicas: int = 1,
    fanout: bool = False,
) -> PhaseResult:
    rec = Received()
    counters: dict[str, dict[str, int]] = {}
    consumer: Any = (
        ingest_consumer(pki, port, store_url, rec, replicas, args.flush_ms)
        if store_url is not None
        else bare_consumer(pki, port, rec)
    )
    expected = len(devs) * math.ceil(args.seconds * rate)
    with consumer as got:
        if isinstance(got, dict):
            counters = got
        fleet, start_at = start_fleet(devs, pki, port, args, rate)
        meter = CpuMeter(
            {
                "robots": lambda: [p.pid for p in fleet.procs],
                "broker": lambda: BROKER_PID[:1],
                "consumer": lambda: list(CONSUMER_PIDS) if store_url else [os.getpid()],
                "db": lambda: [DB_PID[0], *_children(DB_PID[0])] if DB_PID[0] else [],
            }
        )
        time.sleep(max(0.0, start_at - time.time()))
        meter.start()
        # Telemetry lag first, on its own; then the fan-out, while the robots stay online.
        time.sleep(max(0.0, start_at + args.seconds - time.time()))
        cores = meter.cores()
        load = os.getloadavg()[0]
        _wait(lambda: len(rec.seen) >= expected, 60.0)
        fan_s = _fanout(pki, port, devs, rec) if fanout else None
        fleet.join(timeout_s=args.connect_s + args.seconds + 120)
        if fleet.dropped:
            print(f"{fleet.dropped} robots disconnected, e.g. {fleet.dropped_examples}")
        sent = sum(n for _, n in fleet.sent.values())
        _wait(lambda: len(rec.seen) >= sent, 15.0)
    lost, dups = rec.loss(fleet.sent)
    took = max(args.seconds, rec.last_done - start_at)
    robot_cpu_s = meter.used_s.get("robots", 0.0)
    return PhaseResult(
        name,
        len(devs),
        rate,
        sent,
        len(rec.seen),
        lost,
        dups,
        round(sent / args.seconds, 1),
        round(len(rec.seen) / took, 1),
        rec.lags.p(0.5),
        rec.lags.p(0.99),
        round(load, 2),
        fan_s,
        len(rec.committed) if fanout else 0,
        counters,
        cores,
        round(robot_cpu_s / max(1, sent) * 1e6, 1),
        round(fleet.connect_s, 1),
        round(fleet.connect_load, 2),
        round(fleet.late_s, 3),
        fleet.dropped,
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
    devs = fleet_devices(args.robots)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        pki, issued = fleet_pki(args.cert_cache or Path(tmp) / "pki", devs, fleet_services())
        kept = f", the rest kept in {args.cert_cache}" if args.cert_cache else ""
        print(
            f"{args.robots} robot certificates in {time.time() - t0:.1f} s "
            f"({issued} issued now{kept})",
            flush=True,
        )
        with (
            fleet_broker(pki, Path(tmp) / "broker", devs) as port,
            _store(args, tmp) as (store, url),
        ):
            register(store, devs)
            print(
                f"Mosquitto (broker-config, mTLS) on {port}; {args.procs} robot processes; "
                f"{args.rate:g} Hz for {args.seconds:g} s; store {args.store}; "
                f"ingest replicas {args.ingest_replicas}; {os.cpu_count()} CPUs",
                flush=True,
            )
            rows = []
            # The bare consumer's ceiling: raise the rate until it stops keeping up.
            ceiling = None
            for rate in args.ladder or [args.rate]:
                r = run_phase("bare", devs, pki, port, None, args, rate)
                _row(r)
                rows.append(r)
                if ceiling is None or r.msg_s > ceiling.msg_s:
                    ceiling = r
                if not r.kept_up():
                    break
            assert ceiling is not None
            # Ingest at the load of the ceiling (the goal's load without a ladder).
            ing_rate = ceiling.rate_hz
            ingest_rows = []
            for n in args.ingest_replicas:
                r = run_phase(
                    f"ingest/{args.store} x{n}",
                    devs,
                    pki,
                    port,
                    url,
                    args,
                    ing_rate,
                    replicas=n,
                    fanout=args.fanout and n == args.ingest_replicas[-1],
                )
                _row(r)
                rows.append(r)
                ingest_rows.append(r)
            # Read back from the store, not from the consumers' own counting.
            events = store.events(kind="update", limit=len(devs) * len(UPDATE_STATES) + 10)
            stored_commits = len({e.device_id for e in events if e.state == "COMMITTED"})
            db = _stored_counts(store)
    return _report(rows, ceiling, ingest_rows, args, stored_commits, db)


def _stored_counts(store: Store) -> dict[str, int]:
    """Telemetry rows in the database, and how many (device, sequence) are stored twice."""
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        rows, keys = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT (device_id, sequence)) FROM telemetry")
        ).one()
    return {"db_rows": int(rows), "db_duplicates": int(rows) - int(keys)}


@contextmanager
def _store(args: Any, tmp: str) -> Iterator[tuple[Store, str]]:
    if args.store == "sqlite":
        url = f"sqlite:///{tmp}/scale.db"
        store = Store.open(url)
        try:
            yield store, url
        finally:
            store.close()
        return
    with run_postgres() as pg:
        DB_PID[0] = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        url = pg.create_database("scale")
        store = Store.open(url)
        try:
            yield store, url
        finally:
            store.close()


HEADER = (
    f"{'consumer':20s} {'robots':>7s} {'Hz':>5s} {'sent':>8s} {'stored':>8s} {'lost':>6s} "
    f"{'dups':>5s} {'offered/s':>10s} {'msg/s':>9s} {'lag p50':>9s} {'lag p99':>9s} {'load':>6s}"
    "  cores used"
)


def _row(r: PhaseResult) -> None:
    if not getattr(_row, "printed", False):
        print("\n" + HEADER, flush=True)
        _row.printed = True  # type: ignore[attr-defined]
    print(
        f"{r.consumer:20s} {r.robots:7d} {r.rate_hz:5g} {r.sent:8d} {r.delivered:8d} "
        f"{r.lost:6d} {r.duplicates:5d} {r.offered_msg_s:10.1f} {r.msg_s:9.1f} "
        f"{r.lag_p50_s:8.3f}s {r.lag_p99_s:8.3f}s {r.loadavg_1m:6.2f}  "
        + " ".join(f"{k} {v:.2f}" for k, v in (r.cores or {}).items())
        + f"  robots {r.robot_us_per_msg:.0f} us/msg, connected in {r.connect_s:.1f} s "
        f"(load {r.connect_load:.2f}), sent late by at most {r.late_s:.3f} s"
        + (f", {r.robots_dropped} robots disconnected" if r.robots_dropped else ""),
        flush=True,
    )


def _report(
    rows: list[PhaseResult],
    ceiling: PhaseResult,
    ingest_rows: list[PhaseResult],
    args: Any,
    stored_commits: int,
    db: dict[str, int],
) -> dict[str, Any]:
    ing = ingest_rows[-1]
    last_bare = rows[len(rows) - len(ingest_rows) - 1]
    saturated = not last_bare.kept_up()
    print(
        f"\nbare ceiling: {ceiling.msg_s:.1f} msg/s at {ceiling.rate_hz:g} Hz x {ceiling.robots} "
        + (
            f"robots (the bare consumer stopped keeping up at {last_bare.rate_hz:g} Hz)"
            if saturated
            else "robots (not saturated: raise --ladder to find the real ceiling)"
        )
    )
    if ceiling.offered_msg_s < 0.95 * ceiling.robots * ceiling.rate_hz:
        print(
            f"the simulator sent {ceiling.offered_msg_s:.0f} msg/s of "
            f"{ceiling.robots * ceiling.rate_hz:.0f} asked: the robots' processes are the limit"
        )
    for r in ingest_rows:
        print(f"{r.consumer}: {r.msg_s / (ceiling.msg_s or 1.0):.3f} of the bare ceiling")
    if ing.fanout_s is not None:
        print(
            f"fan-out: {ing.fanout_robots} robots, first hint -> last COMMITTED stored: "
            f"{ing.fanout_s:.2f} s"
        )
    elif args.fanout:
        print(f"fan-out: only {ing.fanout_robots}/{ing.robots} robots committed in 120 s")
    result = {
        "robots": ing.robots,
        "rate_hz": ing.rate_hz,
        "seconds": args.seconds,
        "store": args.store,
        "replicas": args.ingest_replicas[-1],
        "sent": ing.sent,
        "lost": ing.lost,
        "duplicates": ing.duplicates,
        "db_duplicates": db["db_duplicates"],
        "ingest_msg_s": ing.msg_s,
        "bare_msg_s": ceiling.msg_s,
        "bare_saturated": saturated,
        # Ingest at the load where the bare consumer peaked: against a real ceiling
        # when bare_saturated, else against the highest load tried.
        "ingest_ratio_vs_ceiling": round(ing.msg_s / (ceiling.msg_s or 1.0), 3),
        "lag_p50_s": round(ing.lag_p50_s, 3),
        "lag_p99_s": round(ing.lag_p99_s, 3),
        "bare_lag_p99_s": round(ceiling.lag_p99_s, 3),
        "fanout_robots": ing.fanout_robots,
        "fanout_s": None if ing.fanout_s is None else round(ing.fanout_s, 3),
        "stored_committed_devices": stored_commits,
        "procs": args.procs,
        "client": args.client,
        "robot_us_per_msg": ing.robot_us_per_msg,
        "connect_s": ing.connect_s,
        "robots_dropped": ing.robots_dropped,
        "loadavg_1m": ing.loadavg_1m,
        "phases": [
            {
                "consumer": r.consumer,
                "rate_hz": r.rate_hz,
                "offered_msg_s": r.offered_msg_s,
                "msg_s": r.msg_s,
                "lost": r.lost,
                "duplicates": r.duplicates,
                "lag_p99_s": round(r.lag_p99_s, 3),
                "loadavg_1m": r.loadavg_1m,
                "cores": r.cores,
                "robot_us_per_msg": r.robot_us_per_msg,
                "connect_s": r.connect_s,
                "connect_loadavg_1m": r.connect_load,
                "late_s": r.late_s,
                "robots_dropped": r.robots_dropped,
            }
            for r in rows
        ],
    }
    print(json.dumps(result))
    return result


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    out = [int(x) for x in text.split(",") if x]
    if not out or any(not 1 <= n <= MAX_REPLICAS for n in out):
        raise argparse.ArgumentTypeError(f"replica counts must be 1..{MAX_REPLICAS}: {text!r}")
    return out


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
        default=600.0,
        help="time allowed for every robot to connect; the load starts once all are",
    )
    ap.add_argument("--no-fanout", dest="fanout", action="store_false")
    ap.add_argument(
        "--cert-cache",
        type=Path,
        default=None,
        help="keep the fleet CA and the robots' certificates in this directory and reuse "
        "them on the next run (default: made anew in a temporary directory)",
    )
    ap.add_argument(
        "--connect-concurrency",
        type=int,
        default=32,
        help="TLS handshakes in flight per robot process while connecting",
    )
    ap.add_argument(
        "--client",
        choices=("lean", "paho"),
        default="lean",
        help="the robots' MQTT client: bench.simrobot's own (lean) or one paho client per "
        "robot (the earlier simulator, for comparison)",
    )
    ap.add_argument(
        "--flush-ms",
        type=float,
        default=50.0,
        help="ingest's longest wait for a batch to fill (IngestSettings.flush_ms)",
    )
    ap.add_argument(
        "--ladder",
        type=_floats,
        default=None,
        help="telemetry rates (Hz) for the bare consumer, raised until it stops keeping up, "
        "e.g. 1,2,4,8; ingest then runs at the rate where bare peaked",
    )
    ap.add_argument(
        "--ingest-replicas",
        type=_ints,
        default=[1],
        help=f"ingest phases, one per count of replica processes (shared subscription "
        f"above one; at most {MAX_REPLICAS}), e.g. 1,3; the fan-out runs in the last",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse(argv))


if __name__ == "__main__":
    main()
