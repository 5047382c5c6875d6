"""Rollout bench: simulated robots through a four-wave rollout with a KPI soak, driven by
the plane's own rollout driver (`RolloutService.step`) on a real store.

Usage::

    python bench/rollouts.py                          # 1000 robots, waves 0.1,0.3,0.6,1, 3 s soak
    python bench/rollouts.py --robots 200 --soak 1 --store postgres

Three rollouts of the same shape run one after the other in this process, over disjoint
sets of `--robots` robots in one store (SQLite, or PostgreSQL started here):

- ``baseline``: no gates, and every driver pass checks every waiting robot (a full scan);
- ``incremental``: no gates, each pass checks only the robots whose state changed (what
  the plane's fleet watch hands the driver);
- ``ours``: incremental, with the parity attestation checked before every wave and a
  `--soak` after each wave but the last, comparing the wave's deadline-miss rate and
  interventions with the robots not updated yet (their telemetry is in the store: 50 Hz
  counters, 1 % missed, a point every second or every quarter of the soak if shorter).

Each wave's robots report COMMITTED (the update event ingest stores) as soon as the wave
is dispatched. Per wave: the latency of the driver pass that decides (reads the
outcomes, checks the gates, dispatches the next wave), its CPU time per robot of the
wave, and the time from the wave's last commit to the next wave's first hint (the hint
the plane publishes to a robot, recorded where it leaves the driver). Also the driver's
CPU for the whole rollout per robot. The driver polls every 50 ms here (0.5 s in the
plane), so a gap is the soak plus the decision plus up to one poll.

Prints a table per rollout, the ratios, and, last, one JSON line (`robots`,
`decision_ms_p99`, `wave_gap_s`, `cpu_us_per_robot`, the baselines' figures).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.attest import statement
from cloud.attest.service import record_from_envelope
from cloud.rollouts.engine import Rollout, RolloutSpec
from cloud.rollouts.gates import GateSpec
from cloud.rollouts.service import RolloutService
from cloud.rollouts.soak import SoakPolicy
from cloud.store import BundleRecord, EventRecord, Store, TelemetryRecord
from cloud.store.attestations import AttestationStore
from runtime.trust import TrustStore

POLICY = hashlib.sha256(b"bench policy").hexdigest()
ROOT = hashlib.sha256(b"bench root").hexdigest()
BUNDLE = {
    "name": "p",
    "version": "1.1.0",
    "sequence": 2,
    "target": "p-1.1.0.efb",
    "sha256": "ab" * 32,
    "length": 10,
}
FRACTIONS = (0.1, 0.3, 0.6, 1.0)
POLL_S = 0.05
_seq = itertools.count(1)


@dataclass
class Run:
    """One rollout's figures; index k of each list is the decision after wave k."""

    name: str
    robots: int
    decision_s: list[float] = field(default_factory=list)
    decision_cpu_per_robot_s: list[float] = field(default_factory=list)
    gap_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # the driver's CPU over the whole rollout
    passes: int = 0

    def p(self, q: float) -> float:
        ms = sorted(x * 1e3 for x in self.decision_s)
        return ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]


class Hints:
    """Stands where the plane publishes hints to MQTT: the time of each wave's first."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.armed = True

    def __call__(self, topic: str, payload: bytes) -> bool:
        if self.armed:
            self.first.append(time.time())
            self.armed = False
        return True


@contextlib.contextmanager
def open_store(kind: str, tmp: Path) -> Iterator[Store]:
    if kind == "sqlite":
        store = Store.open(f"sqlite:///{tmp}/plane.db")
        try:
            yield store
        finally:
            store.close()
        return
    from tests.servers import run_postgres

    with run_postgres() as pg:
        store = Store.open(pg.create_database("rollouts"))
        try:
            yield store
        finally:
            store.close()


def setup(store: Store, tmp: Path, ids: list[str]) -> Path:
    """Robots, the bundle, and a valid parity attestation for it; the trust directory."""
    store.add_devices_bulk([(d, f"{i:064x}", {"g": "x"}) for i, d in enumerate(ids)])
    store.add_bundle(BundleRecord("p", "1.1.0", 2, "ab" * 32, 10, "p-1.1.0.efb", POLICY, ROOT))
    trust = tmp / "trust"
    key = statement.generate_key(tmp / "attestation.key")
    TrustStore(trust).add("attestation", key.public_pem())
    now = dt.datetime.now(dt.UTC)
    stmt = statement.build_statement(
        policy_sha256=POLICY,
        root_digest=ROOT,
        bundle_name="p",
        predicate={"verdict": "attested", "bundle": {"name": "p"}},
        issued_at=now - dt.timedelta(minutes=1),
        expires_at=now + dt.timedelta(days=1),
    )
    raw = statement.envelope_bytes(statement.sign_statement(stmt, key))
    AttestationStore(store.engine).put(
        record_from_envelope(raw, TrustStore(trust).public_keys("attestation"))
    )
    return trust


def telemetry(store: Store, ids: list[str], span_s: float, every_s: float) -> None:
    """Counters for the whole run: 50 Hz, 1 % of the ticks missed, for every robot (each
    robot misses at its own phase, so a short window's rate is not all robots' at once)."""
    t0 = time.time()
    for i, d in enumerate(ids):
        phase = (37 * i) % 100  # spread within any run of neighbouring robots
        pts = []
        for k in range(int(span_s / every_s) + 2):
            ticks = round(50 * every_s * k)
            pts.append(
                TelemetryRecord(
                    at=dt.datetime.fromtimestamp(t0 + every_s * k, dt.UTC),
                    deadline_miss_rate=0.01,
                    extra={"ticks": ticks, "deadline_misses": (ticks + phase) // 100},
                )
            )
        store.record_telemetry(d, next(_seq), pts)


def commit_all(store: Store, ids: list[str]) -> None:
    at = dt.datetime.now(dt.UTC)
    for d in ids:
        store.record_event(
            EventRecord(d, next(_seq), at, "update", "COMMITTED", "", "", dict(BUNDLE))
        )


def drive(
    store: Store, trust: Path, ids: list[str], gates: dict[str, Any], name: str, full: bool
) -> Run:
    """One four-wave rollout through the driver, the robots committing each wave at once."""
    plane = types.SimpleNamespace(store=store, home=types.SimpleNamespace(trust=trust))
    svc = RolloutService(plane, hints=True)  # type: ignore[arg-type]  # only store and trust
    hints = Hints()
    svc._hinter = lambda: hints  # type: ignore[method-assign]  # record instead of MQTT
    spec = RolloutSpec(BUNDLE, tuple(ids), FRACTIONS, 0.0, 3600, gates=gates)
    r = Rollout.create(f"ro-{name}", spec, now=time.time(), created_by="bench")
    out = Run(name, len(ids))

    def step(dirty: set[str] | None) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        svc.step(r, None if full else dirty)
        cpu = time.process_time() - cpu
        out.cpu_s += cpu
        out.passes += 1
        return time.perf_counter() - wall, cpu

    step(None)  # starts the rollout and dispatches wave 0
    for w in r.waves[:-1]:
        commit_all(store, w.device_ids)
        last_commit = time.time()
        nxt = r.waves[w.index + 1]
        dirty: set[str] = set(w.device_ids)  # the watch announces the wave's robots once
        hints.armed = True
        while nxt.dispatched_at is None:
            wall, cpu = step(dirty)
            dirty = set()
            if nxt.dispatched_at is not None:
                out.decision_s.append(wall)
                out.decision_cpu_per_robot_s.append(cpu / len(w.device_ids))
                out.gap_s.append(hints.first[-1] - last_commit)
            elif r.state != "running":
                raise SystemExit(f"{name}: the rollout stopped: {r.reason}")
            else:
                time.sleep(POLL_S)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=1000, help="robots per rollout")
    ap.add_argument("--soak", type=float, default=3.0, help="soak seconds per wave (ours)")
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    a = ap.parse_args(argv)
    if a.robots < 10:
        ap.error("--robots: at least 10 (the first wave is a tenth)")
    n = a.robots
    ids = [f"r{i:05d}" for i in range(3 * n)]
    base_ids, incr_ids, ours_ids = ids[:n], ids[n : 2 * n], ids[2 * n :]
    ungated = GateSpec(allow_unattested=True, override_by="bench").to_dict()
    gated = {**GateSpec().to_dict(), "soak": SoakPolicy(a.soak).to_dict()}
    with tempfile.TemporaryDirectory() as tmp, open_store(a.store, Path(tmp)) as store:
        t0 = time.time()
        trust = setup(store, Path(tmp), ids)
        telemetry(store, ours_ids, 4 * (a.soak + 5) + 10, min(1.0, a.soak / 4))
        print(f"{3 * n} robots, telemetry of {n} in {a.store}: {time.time() - t0:.1f} s")
        runs = [
            drive(store, trust, base_ids, ungated, "baseline", full=True),
            drive(store, trust, incr_ids, ungated, "incremental", full=False),
            drive(store, trust, ours_ids, gated, "ours", full=False),
        ]
    labels = {
        "baseline": "baseline: no gates, full scans",
        "incremental": "no gates, incremental",
        "ours": f"ours: attestation + {a.soak:g} s soak",
    }
    print(f"\n{n} robots per rollout, waves {','.join(f'{f:g}' for f in FRACTIONS)}")
    print(f"{'rollout':<32}{'decision':>9}{'ms':>9}{'CPU µs/robot':>14}{'gap s':>8}")
    for run in runs:
        for k, (d, c, g) in enumerate(
            zip(run.decision_s, run.decision_cpu_per_robot_s, run.gap_s, strict=True)
        ):
            step = f"{k}->{k + 1}"
            print(f"{labels[run.name]:<32}{step:>9}{d * 1e3:>9.2f}{c * 1e6:>14.1f}{g:>8.2f}")
    print(
        f"\n{'rollout':<32}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/robot':>14}{'gap s':>8}{'passes':>8}"
    )
    for run in runs:
        cpu = run.cpu_s / run.robots * 1e6
        print(
            f"{labels[run.name]:<32}{run.p(0.5):>9.2f}{run.p(0.99):>9.2f}{cpu:>14.1f}"
            f"{max(run.gap_s):>8.2f}{run.passes:>8d}"
        )
    base, incr, ours = runs
    print(
        f"decision p99 ours/incremental {ours.p(0.99) / incr.p(0.99):.2f}x, "
        f"incremental/baseline {incr.p(0.99) / base.p(0.99):.2f}x; "
        f"wave gap ours = {a.soak:g} s soak + {max(ours.gap_s) - a.soak:.2f} s"
    )
    result = {
        "bench": "rollouts",
        "robots": n,
        "waves": len(FRACTIONS),
        "soak_s": a.soak,
        "store": a.store,
        "decision_ms_p50": round(ours.p(0.5), 3),
        "decision_ms_p99": round(ours.p(0.99), 3),
        "decision_ms_per_wave": [round(x * 1e3, 3) for x in ours.decision_s],
        "cpu_us_per_robot": round(ours.cpu_s / n * 1e6, 2),
        "wave_gap_s": round(max(ours.gap_s), 3),
        "wave_gaps_s": [round(x, 3) for x in ours.gap_s],
        "incremental_decision_ms_p99": round(incr.p(0.99), 3),
        "incremental_wave_gap_s": round(max(incr.gap_s), 3),
        "baseline_decision_ms_p99": round(base.p(0.99), 3),
        "baseline_cpu_us_per_robot": round(base.cpu_s / n * 1e6, 2),
        "baseline_wave_gap_s": round(max(base.gap_s), 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
