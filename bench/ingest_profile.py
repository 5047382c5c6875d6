"""Ingest's CPU per message, stage by stage, old and new in one process.

Usage::

    python bench/ingest_profile.py                       # 20 rounds of 2,000 messages
    python bench/ingest_profile.py --rounds 10 --batch 1000 --baseline HEAD~3
    python bench/ingest_profile.py --profile             # + cProfile of the new path

Each round feeds one batch of real encoded payloads, as robots publish them (one
telemetry point per batch as the fleet simulator sends, a few richer points as the
agent's encoder makes them, update events and presence), through ingest's own batch
step (`Ingest._process`: decode and validate, de-duplicate, write into a real
PostgreSQL started here, acknowledge). Every message of a round is new, so every one
is written. The acknowledgements go to a real paho client connected to a real
Mosquitto, so their cost is paho's.

Two implementations take turns round by round on the same database: ``new`` (this
tree) and ``old`` (``cloud/ingest.py``, ``cloud/ingest_decode.py`` and
``cloud/store/ingest_batch.py`` as they were at ``--baseline``, loaded from git into
modules of their own). Per message it prints the writer thread's CPU time, the whole
process's (with paho's thread sending the acknowledgements: what one ingest replica
spends; PostgreSQL's own work is in its processes) and the wall time,
then, from a second instrumented pass, the CPU of each stage: ``handoff`` (the MQTT
callback's queueing of a message and the writer taking it), ``decode`` (parse and
validate), ``write`` (de-duplication and the store transactions) and ``ack``. Last a
JSON line. The machine is shared: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import importlib.util
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud import ingest as new_ingest  # noqa: E402
from cloud.mqtt import CloudMqtt, CloudMqttSettings, Delivery  # noqa: E402
from cloud.store import Store  # noqa: E402
from fleet.telemetry import HostMetrics, make_point  # noqa: E402
from protos import common_pb2, runtime_control_pb2, telemetry_pb2  # noqa: E402
from tests.servers import run_mosquitto, run_postgres  # noqa: E402

# The modules of the ingest path, in import order (each may import the ones before it).
PATH_MODULES = ("cloud/store/ingest_batch.py", "cloud/ingest_decode.py", "cloud/ingest.py")
DEFAULT_BASELINE = "9dd0c7f"
"""The last commit before ingest's per-message cost was cut."""


def load_baseline(rev: str) -> types.ModuleType:
    """`cloud.ingest` as of `rev`, with its own copies of the decoder and batch writer."""
    names = {p: f"_baseline_{Path(p).stem}" for p in PATH_MODULES}
    dotted = {p[:-3].replace("/", "."): n for p, n in names.items()}
    mod: types.ModuleType | None = None
    for path, name in names.items():
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for old, new in dotted.items():
            src = src.replace(f"from {old} import", f"from {new} import")
        spec = importlib.util.spec_from_loader(name, loader=None)
        assert spec is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    assert mod is not None
    return mod


# --------------------------------------------------------------------------- payloads


def _sim_telemetry(dev: str, seq: int) -> bytes:
    """What the fleet simulator's robots send: one point stamped with its send time."""
    b = telemetry_pb2.TelemetryBatch(device_id=dev, sequence=seq)
    p = b.points.add(loop_p50_ms=0.1, loop_p99_ms=0.2, ticks=50)
    p.at.FromNanoseconds(time.time_ns())
    return b.SerializeToString()


def _agent_telemetry(dev: str, seq: int) -> bytes:
    """What the robot agent's encoder sends: three full points, an active bundle."""
    loop = runtime_control_pb2.LoopMetrics(
        latency_p50_ms=0.4, latency_p99_ms=1.2, latency_p999_ms=2.5, ticks=500, deadline_misses=2
    )
    loop.interventions["clamp"] = 3
    loop.interventions["estop"] = 1
    bundle = common_pb2.BundleRef(
        name="pendulum", version="1.2.0", sequence=7, policy_sha256="ab" * 32
    )
    host = HostMetrics(23.5, 41.0, 1.2e10, 48.5)
    b = telemetry_pb2.TelemetryBatch(device_id=dev, sequence=seq)
    now = dt.datetime.now(dt.UTC)
    for k in range(3):
        at = now - dt.timedelta(seconds=2 - k)
        b.points.append(make_point(at, loop, host, "RUNNING", bundle, "SCHED_FIFO", True))
    return b.SerializeToString()


def _event(dev: str, seq: int) -> bytes:
    ev = telemetry_pb2.Event(
        device_id=dev, sequence=seq, kind="update", state="SHADOWING", reason_code="OK"
    )
    ev.bundle.name = "pendulum"
    ev.at.FromDatetime(dt.datetime.now(dt.UTC))
    return ev.SerializeToString()


def _state(dev: str, _seq: int) -> bytes:
    st = telemetry_pb2.DeviceState(device_id=dev, online=True, runtime_version="0.9.1")
    st.at.FromDatetime(dt.datetime.now(dt.UTC))
    return st.SerializeToString()


def payloads(devices: int, n: int, seq: int) -> list[tuple[str, bytes]]:
    """`n` messages from `devices` robots: 90% simulator telemetry, 4% agent telemetry,
    3% events, 3% presence. `seq` makes every (device, sequence) of a round new."""
    out = []
    for i in range(n):
        dev = f"sim-{i % devices:05d}"
        # Each device's messages of a round get sequences of their own.
        s = seq * 1_000 + i // devices + 1
        r = i % 100
        if r < 90:
            kind, payload = "telemetry", _sim_telemetry(dev, s)
        elif r < 94:
            kind, payload = "telemetry", _agent_telemetry(dev, s)
        elif r < 97:
            kind, payload = "events", _event(dev, s)
        else:
            kind, payload = "state", _state(dev, s)
        out.append((f"edgeflux/v1/devices/{dev}/{kind}", payload))
    return out


# --------------------------------------------------------------------------- stages


class Stages:
    """CPU seconds per stage, summed over calls (the calling thread's CPU)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - t0

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - t0

        return timed


class _Acks:
    """The paho client's ack, timed (and counted: every message must be acknowledged)."""

    def __init__(self, client: Any, stages: Stages | None) -> None:
        self.client = client
        self.count = 0
        self._ack = stages.wrap("ack", client.ack) if stages else client.ack

    def ack(self, mid: int, qos: int) -> None:
        self.count += 1
        self._ack(mid, qos)


def make_ingest(mod: types.ModuleType, store: Store, stages: Stages | None) -> Any:
    ing = mod.Ingest(
        store,
        CloudMqttSettings(port=1, client_id="bench-profile"),  # never started
        mod.IngestSettings(batch_max=100_000),
        quarantine=lambda _records: None,
    )
    if stages is not None:
        write_kind = ing._write_kind
        ing._write_kind = lambda kind, *a: stages.wrap(f"write.{kind}", write_kind)(kind, *a)
    return ing


@contextmanager
def _decode_timed(mod: types.ModuleType, stages: Stages | None) -> Iterator[None]:
    """Times the decoder `mod`'s `_process` calls (a module-level name in cloud.ingest)."""
    if stages is None:
        yield
        return
    saved = {n: getattr(mod, n) for n in ("decode", "decode_many") if hasattr(mod, n)}
    for n, fn in saved.items():
        setattr(mod, n, stages.wrap("decode", fn))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(mod, n, fn)


def one_round(
    mod: types.ModuleType,
    ing: Any,
    msgs: list[tuple[str, bytes]],
    client: Any,
    stages: Stages | None,
) -> tuple[float, float, float]:
    """(writer CPU s, process CPU s, wall s) of one batch through `ing`: handoff, then
    `_process`; the process's CPU includes paho's thread sending the acknowledgements."""
    acks = _Acks(client, stages)
    deliveries = [Delivery(t, p, i + 1, 1, acks) for i, (t, p) in enumerate(msgs)]
    c0, p0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
    ctx = stages.timing("handoff") if stages else _nothing()
    with ctx:
        for d in deliveries:
            ing._enqueue(d)
        batch = [ing._queue.get_nowait() for _ in deliveries]
    with _decode_timed(mod, stages):
        ing._process(batch)
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    deadline = time.monotonic() + 10
    while client._out_packet and time.monotonic() < deadline:  # paho sends the acks
        time.sleep(0.0005)
    proc = time.process_time() - p0
    if acks.count != len(msgs):
        raise RuntimeError(f"{acks.count} of {len(msgs)} messages acknowledged")
    return cpu, proc, wall


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run(args: Any) -> dict[str, Any]:
    impls = {"new": new_ingest, "old": load_baseline(args.baseline)}
    devices = args.devices
    cpu: dict[str, list[float]] = {k: [] for k in impls}
    wall: dict[str, list[float]] = {k: [] for k in impls}
    proc: dict[str, list[float]] = {k: [] for k in impls}
    stages = {k: Stages() for k in impls}
    stored: dict[str, int] = {}
    prof = cProfile.Profile() if args.profile else None
    with (
        run_postgres() as pg,
        run_mosquitto("listener {port} 127.0.0.1\nallow_anonymous true\n") as mq,
    ):
        store = Store.open(pg.create_database("ingest_profile"))
        paho = CloudMqtt(
            CloudMqttSettings(port=mq.port, client_id="bench-acks"),
            clean_session=True,
            manual_ack=True,  # else paho's ack() sends nothing
        )
        paho.start()
        try:
            store.add_devices_bulk([(f"sim-{i:05d}", "0" * 64, {}) for i in range(devices)])
            client = paho._client
            ings = {k: make_ingest(m, store, None) for k, m in impls.items()}
            timed = {k: make_ingest(m, store, stages[k]) for k, m in impls.items()}
            seq = 0
            # Round 0 warms both up; then timed rounds, then instrumented ones.
            for r in range(args.rounds + 1):
                for name, mod in impls.items():
                    seq += 1
                    msgs = payloads(devices, args.batch, seq)
                    if prof is not None and name == "new" and r:
                        prof.enable()
                    c, pc, w = one_round(mod, ings[name], msgs, client, None)
                    if prof is not None:
                        prof.disable()
                    if r:
                        cpu[name].append(c / args.batch)
                        proc[name].append(pc / args.batch)
                        wall[name].append(w / args.batch)
            for _ in range(args.rounds):
                for name, mod in impls.items():
                    seq += 1
                    one_round(
                        mod, timed[name], payloads(devices, args.batch, seq), client, stages[name]
                    )
            for name, ing in {**ings, **timed}.items():
                stored[name] = stored.get(name, 0) + ing.counters["stored"]
            n_instr = args.rounds * args.batch
        finally:
            paho.stop()
            store.close()
    med = {k: statistics.median(v) * 1e6 for k, v in cpu.items()}
    medw = {k: statistics.median(v) * 1e6 for k, v in wall.items()}
    medp = {k: statistics.median(v) * 1e6 for k, v in proc.items()}
    print(f"{args.batch} messages a batch, {args.rounds} rounds, {devices} devices")
    print(
        f"{'path':6s} {'writer CPU us/msg':>18s} {'process CPU us/msg':>19s} "
        f"{'wall us/msg':>12s} {'msg/s/core':>11s}"
    )
    for k in impls:
        print(f"{k:6s} {med[k]:18.1f} {medp[k]:19.1f} {medw[k]:12.1f} {1e6 / medp[k]:11.0f}")
    print(
        f"old/new CPU per message: writer {med['old'] / med['new']:.2f}x, "
        f"process {medp['old'] / medp['new']:.2f}x"
    )
    print()
    for st in stages.values():
        st.cpu["write"] = sum(v for k, v in st.cpu.items() if k.startswith("write."))
    names = ("handoff", "decode", "write", "ack", "write.telemetry", "write.event", "write.state")
    print(
        f"{'stage CPU us/msg':18s} " + " ".join(f"{s.replace('write.', 'w.'):>8s}" for s in names)
    )
    per_stage: dict[str, dict[str, float]] = {}
    for k, st in stages.items():
        per_stage[k] = {s: round(st.cpu.get(s, 0.0) / n_instr * 1e6, 2) for s in names}
        print(f"{k:18s} " + " ".join(f"{per_stage[k][s]:8.1f}" for s in names))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    out = {
        "batch": args.batch,
        "rounds": args.rounds,
        "devices": devices,
        "baseline": args.baseline,
        "cpu_us_per_msg": {k: round(v, 2) for k, v in med.items()},
        "process_cpu_us_per_msg": {k: round(v, 2) for k, v in medp.items()},
        "wall_us_per_msg": {k: round(v, 2) for k, v in medw.items()},
        "old_vs_new_cpu": round(med["old"] / med["new"], 2),
        "old_vs_new_process_cpu": round(medp["old"] / medp["new"], 2),
        "stages_cpu_us_per_msg": per_stage,
        "stored": stored,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2000, help="messages per batch")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the old path")
    ap.add_argument("--profile", action="store_true", help="cProfile the new path's rounds")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
