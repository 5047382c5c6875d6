"""Rollout gates benchmark: a four-wave rollout of `--robots` simulated robots through the
plane's driver, ungated (baseline) and gated (ours: the parity attestation checked
before every wave and a KPI soak after each wave but the last).

Usage::

    python bench/rollout_gates.py                     # 1000 robots, waves 0.1,0.3,0.6,1
    python bench/rollout_gates.py --robots 200 --soak 2

A SQLite store holds twice `--robots` robots (one set per rollout), their telemetry
(50 Hz counters every second, or every quarter of the soak if shorter) and the
published bundle; the driver (`RolloutService.step`) runs in this process. Each
wave's robots report COMMITTED as soon as the wave is dispatched. Per wave we time
the driver pass that decides (reads the outcomes, checks the gates, dispatches the
next wave): its latency and its CPU time per robot of the wave, and the time from
the wave's last commit to the next wave's dispatch (the soak plus the decision).

Prints a table and one JSON line (`robots`, `decision_ms_p99`, `wave_gap_s`, ...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

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
_seq = itertools.count(1)


def setup(tmp: Path, robots: int, span_s: float, every_s: float) -> tuple[Store, Path, list[str]]:
    store = Store.open(f"sqlite:///{tmp}/plane.db")
    ids = [f"r{i:05d}" for i in range(robots)]
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
    trusted = TrustStore(trust).public_keys("attestation")
    AttestationStore(store.engine).put(record_from_envelope(raw, trusted))
    t0 = time.time()
    for d in ids:  # counters for the whole run: 50 Hz, 1 % missed
        pts = []
        for k in range(int(span_s / every_s) + 2):
            ticks = round(50 * every_s * k)
            pts.append(
                TelemetryRecord(
                    at=dt.datetime.fromtimestamp(t0 + every_s * k, dt.UTC),
                    deadline_miss_rate=0.01,
                    extra={"ticks": ticks, "deadline_misses": ticks // 100},
                )
            )
        store.record_telemetry(d, next(_seq), pts)
    return store, trust, ids


def commit_all(store: Store, ids: list[str]) -> None:
    at = dt.datetime.now(dt.UTC)
    for d in ids:
        store.record_event(
            EventRecord(d, next(_seq), at, "update", "COMMITTED", "", "", dict(BUNDLE))
        )


def run(
    store: Store, trust: Path, ids: list[str], gates: dict[str, object], tag: str
) -> tuple[list[float], list[float], list[float]]:
    home = types.SimpleNamespace(trust=trust)
    plane = types.SimpleNamespace(store=store, home=home, config=None)
    svc = RolloutService(plane, hints=False)  # type: ignore[arg-type]  # only these three
    spec = RolloutSpec(BUNDLE, tuple(ids), FRACTIONS, 0.0, 3600, gates=gates)
    r = Rollout.create(f"ro-{tag}", spec, now=time.time(), created_by="bench")
    svc.step(r)  # starts and dispatches wave 0
    decisions: list[float] = []
    cpu_per_robot: list[float] = []
    gaps: list[float] = []
    for w in r.waves[:-1]:
        commit_all(store, w.device_ids)
        last_commit = time.time()
        nxt = r.waves[w.index + 1]
        while nxt.dispatched_at is None:
            wall, cpu = time.perf_counter(), time.process_time()
            svc.step(r, set(w.device_ids))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if nxt.dispatched_at is not None:
                decisions.append(wall)
                cpu_per_robot.append(cpu / len(w.device_ids))
                gaps.append(nxt.dispatched_at - last_commit)
            elif r.state != "running":
                raise SystemExit(f"{tag}: the rollout stopped: {r.reason}")
            else:
                time.sleep(0.05)  # the driver's poll interval, shortened
    return decisions, cpu_per_robot, gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=1000, help="robots per rollout")
    ap.add_argument("--soak", type=float, default=3.0, help="soak seconds per wave (ours)")
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # two rollouts of the same shape over disjoint robots
        store, trust, ids = setup(
            Path(tmp), 2 * a.robots, 4 * (a.soak + 5) + 10, min(1.0, a.soak / 4)
        )
        half = a.robots
        base_gates = GateSpec(allow_unattested=True, override_by="bench").to_dict()
        ours_gates = {**GateSpec().to_dict(), "soak": SoakPolicy(a.soak).to_dict()}
        results["baseline: no gates"] = run(store, trust, ids[:half], base_gates, "base")
        results["ours: attestation + soak"] = run(store, trust, ids[half:], ours_gates, "ours")
        store.close()
    print(f"{half} robots per rollout, waves {','.join(f'{f:g}' for f in FRACTIONS)}")
    print(f"{'rollout':<28}{'decision p50 ms':>16}{'p99 ms':>9}{'CPU µs/robot':>14}{'gap s':>8}")
    row = {}
    for name, (dec, cpu, gaps) in results.items():
        ms = sorted(x * 1e3 for x in dec)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        row[name] = (statistics.median(ms), p99, statistics.median(cpu) * 1e6, max(gaps))
        print(f"{name:<28}{row[name][0]:>16.2f}{p99:>9.2f}{row[name][2]:>14.1f}{max(gaps):>8.2f}")
    base, ours = row["baseline: no gates"], row["ours: attestation + soak"]
    print(f"decision p50 ours/baseline {ours[0] / base[0]:.2f}x; wave gap = soak + decision")
    print(
        json.dumps(
            {
                "bench": "rollout_gates",
                "robots": half,
                "waves": len(FRACTIONS),
                "soak_s": a.soak,
                "decision_ms_p50": round(ours[0], 3),
                "decision_ms_p99": round(ours[1], 3),
                "baseline_decision_ms_p99": round(base[1], 3),
                "cpu_us_per_robot": round(ours[2], 2),
                "wave_gap_s": round(ours[3], 3),
                "baseline_wave_gap_s": round(base[3], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
