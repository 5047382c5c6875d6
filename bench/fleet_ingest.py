"""Fleet ingest benchmark: simulated devices at 5 Hz through Mosquitto into the store.

Usage::

    python bench/fleet_ingest.py                     # ladder 100..1600 devices, 4 s a step
    python bench/fleet_ingest.py --seconds 6 --ladder 200,400,800 --fanout 200

Part 1. Publisher processes simulate N devices, each sending one QoS 1 TelemetryBatch
(one point, stamped with its send time) every 200 ms through a real Mosquitto
(configured like `cloud broker-config`: deep queues). Three consumers are measured in
the same run, one after the other, on the same ladder of device counts:

- ``bare``: a paho subscriber that only decodes the timestamp and counts — the
  broker + client ceiling;
- ``sqlite``: `cloud.ingest.Ingest` into a SQLite (WAL) store;
- ``postgres``: the same into a real PostgreSQL started here.

Lag = store commit time (bare: receive time) − send time. For each consumer the
result is the largest N whose p99 lag stays < 1 s with >= 99% delivered within the
step. Goal: postgres >= 50% of the bare ceiling.

Part 2 (fan-out). `--fanout` simulated agents (one MQTT connection each, no runtime
or TUF: they answer the hint with a COMMITTED event) receive a `cloud.push` hint;
prints the time from the push until ingest stored the last COMMITTED event.

Prints a table, the ratios and one JSON line. The machine is shared: compare the
ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.ingest import Decoded, Ingest, IngestSettings
from cloud.mqtt import CloudMqtt, CloudMqttSettings, Delivery
from cloud.store import Store
from protos import telemetry_pb2
from tests.servers import run_mosquitto, run_postgres

BROKER_CONF = (
    "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"
    "max_queued_bytes 0\nmax_inflight_messages 1000\n"
)
RATE_HZ = 5.0


# --------------------------------------------------------------------------- publishers


def _publisher(
    port: int, first: int, count: int, seconds: float, start_at: float, q: Any, seq0: int
) -> None:
    from fleet.mqtt import MqttSettings, MqttTransport, topic

    t = MqttTransport(MqttSettings(port=port, max_inflight=1000), f"bench-pub-{first}")
    t.start()
    if not t.wait_connected(10):
        q.put(0)
        return
    # Sequences continue across steps: the store keeps earlier steps' (device, sequence).
    seqs = [seq0] * count
    sent = 0
    period = 1.0 / RATE_HZ
    while time.time() < start_at:
        time.sleep(0.005)
    end = start_at + seconds
    tick = 0
    while True:
        slot_start = start_at + tick * period
        if slot_start >= end:
            break
        for i in range(count):
            # spread each device's send over the period
            due = slot_start + period * i / count
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            dev = f"dev-{first + i:05d}"
            seqs[i] += 1
            b = telemetry_pb2.TelemetryBatch(device_id=dev, sequence=seqs[i])
            p = b.points.add(loop_p50_ms=0.1, loop_p99_ms=0.2, ticks=500)
            p.at.FromNanoseconds(time.time_ns())
            while not t.publish(topic(dev, "telemetry"), b.SerializeToString()):
                time.sleep(0.001)
            sent += 1
        tick += 1
    time.sleep(0.5)
    t.stop()
    q.put(sent)


def run_load(port: int, devices: int, seconds: float, procs: int) -> int:
    """Run `devices` simulated devices for `seconds`; returns messages sent."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    per = -(-devices // procs)
    start_at = time.time() + 3.0  # spawn + connect time
    ps = []
    for k in range(procs):
        first = k * per
        n = min(per, devices - first)
        if n <= 0:
            break
        p = ctx.Process(
            target=_publisher, args=(port, first, n, seconds, start_at, q, int(start_at * 1000))
        )
        p.start()
        ps.append(p)
    total = sum(q.get(timeout=seconds + 60) for _ in ps)
    for p in ps:
        p.join(10)
    return total


# --------------------------------------------------------------------------- consumers


class Lags:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.lock = threading.Lock()

    def add(self, sent_at_s: float, done_at_s: float) -> None:
        with self.lock:
            self.values.append(done_at_s - sent_at_s)

    def p(self, q: float) -> float:
        with self.lock:
            v = sorted(self.values)
        return v[min(len(v) - 1, int(q * len(v)))] if v else float("inf")


@contextmanager
def bare(port: int, lags: Lags) -> Iterator[None]:
    def on_message(d: Delivery) -> None:
        b = telemetry_pb2.TelemetryBatch.FromString(d.payload)
        lags.add(b.points[0].at.ToNanoseconds() / 1e9, time.time())

    c = CloudMqtt(
        CloudMqttSettings(port=port, client_id="bench-bare"),
        on_message=on_message,
        clean_session=True,
    )
    c.subscribe("edgeflux/v1/devices/+/telemetry")
    c.start()
    try:
        yield
    finally:
        c.stop()


def register(store: Store, ids: list[str]) -> None:
    """Ingest stores data only from registered devices."""
    known = {d.id for d in store.list_devices(limit=10_000, with_total=False).devices}
    rows = [(i, "0" * 64, {}) for i in ids if i not in known]
    if rows:
        store.add_devices_bulk(rows)


@contextmanager
def ingest(port: int, lags: Lags, url: str, devices: int = 0, name: str = "x") -> Iterator[None]:
    store = Store.open(url)
    register(store, [f"dev-{i:05d}" for i in range(devices)])

    def committed(done: Any, at: float) -> None:
        for m in done:
            if isinstance(m, Decoded) and m.telemetry:
                lags.add(m.telemetry[0].at.timestamp(), at)

    ing = Ingest(
        store,
        # One client id per consumer: its persistent session is reused step after step
        # (a new id per step would leave subscribed sessions queueing behind).
        CloudMqttSettings(port=port, client_id=f"bench-ingest-{name}"),
        IngestSettings(batch_max=1000, flush_ms=50),
        on_committed=committed,
    )
    ing.start()
    try:
        yield
    finally:
        ing.stop()
        store.close()


def ladder_run(
    name: str,
    consumer: Callable[[Lags], AbstractContextManager[None]],
    port: int,
    ladder: list[int],
    seconds: float,
    procs: int,
) -> tuple[int, list[dict[str, Any]]]:
    best = 0
    rows = []
    with consumer(Lags()):  # warm-up, not measured: connections, caches, first commits
        time.sleep(0.5)
        run_load(port, ladder[0], 2.0, procs)
    for n in ladder:
        lags = Lags()
        with consumer(lags):
            time.sleep(0.5)
            sent = run_load(port, n, seconds, procs)
            deadline = time.time() + 5.0
            while len(lags.values) < sent and time.time() < deadline:
                time.sleep(0.05)
        got = len(lags.values)
        row = {
            "consumer": name,
            "devices": n,
            "sent": sent,
            "delivered": got,
            "msg_s": round(sent / seconds, 1),
            "p50_ms": round(lags.p(0.5) * 1000, 1),
            "p99_ms": round(lags.p(0.99) * 1000, 1),
        }
        rows.append(row)
        ok = sent > 0 and got >= 0.99 * sent and lags.p(0.99) < 1.0
        print(
            f"  {name:9s} {n:6d} devices  {row['msg_s']:8.1f} msg/s  delivered {got}/{sent}  "
            f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  {'ok' if ok else 'OVER'}",
            flush=True,
        )
        if not ok:
            break
        best = n
    if name != "bare":  # drop the consumer's persistent session: it would queue on
        purge = CloudMqtt(
            CloudMqttSettings(port=port, client_id=f"bench-ingest-{name}"), clean_session=True
        )
        purge.start()
        purge.stop()
    return best, rows


# --------------------------------------------------------------------------- fan-out


def fanout(port: int, agents: int, url: str) -> float:
    from fleet.mqtt import MqttSettings, MqttTransport, topic

    store = Store.open(url)
    register(store, [f"fan-{i:04d}" for i in range(agents)])
    ing = Ingest(store, CloudMqttSettings(port=port, client_id="bench-fanout-ingest"))
    ing.start()
    transports = []

    def make(dev: str) -> MqttTransport:
        t = MqttTransport(MqttSettings(port=port), dev)

        def on_hint(_t: str, payload: bytes) -> None:
            h = telemetry_pb2.UpdateHint.FromString(payload)
            ev = telemetry_pb2.Event(
                device_id=dev, sequence=h.generation, kind="update", state="COMMITTED"
            )
            ev.at.FromDatetime(dt.datetime.now(dt.UTC))
            t.publish(topic(dev, "events"), ev.SerializeToString())

        t.subscribe(topic(dev, "updates"), on_hint)
        t.start()
        return t

    devices = [f"fan-{i:04d}" for i in range(agents)]
    for d in devices:
        transports.append(make(d))
    deadline = time.time() + 60
    while not all(t.is_connected() for t in transports) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # subscriptions settle
    pub = CloudMqtt(CloudMqttSettings(port=port, client_id="bench-push"), clean_session=True)
    pub.start()
    t0 = time.perf_counter()
    for d in devices:
        hint = telemetry_pb2.UpdateHint(bundle_name="pendulum", sequence=2, generation=1)
        pub.publish(topic(d, "updates"), hint.SerializeToString(), wait_s=None)
    elapsed = float("nan")
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(store.events(kind="update", limit=agents + 10)) >= agents:
            elapsed = time.perf_counter() - t0
            break
        time.sleep(0.01)
    pub.stop()
    for t in transports:
        t.stop(timeout_s=1)
    ing.stop()
    store.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ladder", default="100,200,400,800,1600")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--procs", type=int, default=2, help="publisher processes")
    ap.add_argument("--fanout", type=int, default=200)
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    ladder = [int(x) for x in args.ladder.split(",")]
    results: dict[str, Any] = {"ladder": ladder, "seconds": args.seconds, "rate_hz": RATE_HZ}
    with tempfile.TemporaryDirectory() as tmp, run_mosquitto(BROKER_CONF) as broker:
        port = broker.port
        print(f"Mosquitto on {port}; {args.procs} publisher processes; {args.seconds:g} s a step")
        best: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        best["bare"], r = ladder_run(
            "bare", lambda lg: bare(port, lg), port, ladder, args.seconds, args.procs
        )
        rows += r
        sqlite_url = f"sqlite:///{tmp}/bench.db"
        best["sqlite"], r = ladder_run(
            "sqlite",
            lambda lg: ingest(port, lg, sqlite_url, max(ladder), "sqlite"),
            port,
            ladder,
            args.seconds,
            args.procs,
        )
        rows += r
        pg_url = None
        if not args.skip_postgres:
            with run_postgres() as pg:
                pg_url = pg.create_database("bench")
                best["postgres"], r = ladder_run(
                    "postgres",
                    lambda lg: ingest(port, lg, pg_url or "", max(ladder), "postgres"),
                    port,
                    ladder,
                    args.seconds,
                    args.procs,
                )
                rows += r
                fan_s = (
                    fanout(port, args.fanout, pg.create_database("fanout")) if args.fanout else None
                )
        else:
            fan_s = fanout(port, args.fanout, f"sqlite:///{tmp}/fan.db") if args.fanout else None
    print()
    print(
        f"{'consumer':10s} {'max devices @5Hz, p99 lag < 1 s':>34s} {'msg/s':>9s} {'vs bare':>8s}"
    )
    ceiling = best.get("bare", 0) or 1
    for name, n in best.items():
        print(f"{name:10s} {n:34d} {n * RATE_HZ:9.0f} {n / ceiling:8.2f}")
    if fan_s is not None:
        print(f"\nfan-out: {args.fanout} simulated agents, push -> last COMMITTED: {fan_s:.2f} s")
    ratios = {k: round(v / ceiling, 3) for k, v in best.items()}
    results.update(
        {
            "max_devices": best,
            "ratio_vs_bare": ratios,
            "postgres_goal_met": ratios.get("postgres", 0) >= 0.5,
            "fanout_agents": args.fanout,
            "fanout_last_commit_s": fan_s,
            "rows": rows,
            "contended": True,
        }
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
