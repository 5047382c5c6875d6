"""Rollout driver benchmark: a full outcome scan vs the incremental (watch-driven) pass.

Usage::

    python bench/rollouts.py                  # 1000 devices in one running wave
    python bench/rollouts.py --devices 5000 --changed 50 --rounds 5

A SQLite store holds `--devices` devices, all in the dispatched wave of one rollout
and none reported yet. Baseline: a driver pass that reads every waiting device's
update events and row (what each pass would cost without the fleet watch). Ours: the
pass the driver runs between full scans, reading only the `--changed` devices the
watch announced. Both run in this process, interleaved round by round, on the same
store; the rollout is rebuilt each round so both see the same waiting devices.

Prints a table, the ratio, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.rollouts.engine import Rollout, RolloutSpec
from cloud.rollouts.gates import GateSpec
from cloud.rollouts.service import RolloutService
from cloud.store import BundleRecord, Store

BUNDLE = {
    "name": "p",
    "version": "1.1.0",
    "sequence": 2,
    "target": "p-1.1.0.efb",
    "sha256": "ab" * 32,
    "length": 10,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--changed", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/plane.db")
        ids = [f"d{i:05d}" for i in range(a.devices)]
        store.add_devices_bulk([(d, f"{i:064x}", {"g": "x"}) for i, d in enumerate(ids)])
        store.add_bundle(BundleRecord("p", "1.1.0", 2, "ab" * 32, 10, "p-1.1.0.efb"))
        home = types.SimpleNamespace(trust=Path(tmp) / "trust")  # no attestation keys
        svc = RolloutService(
            types.SimpleNamespace(store=store, home=home, config=None), hints=False
        )
        # the bench bundle has no parity attestation: the override is explicit
        gates = GateSpec(allow_unattested=True, override_by="bench").to_dict()
        spec = RolloutSpec(BUNDLE, tuple(ids), (1.0,), 1.0, 3600, gates=gates)
        r0 = Rollout.create("ro-bench", spec, now=time.time(), created_by="bench")
        svc.step(r0)  # dispatch once (sets desired state for every device)
        status = r0.to_status()
        changed = set(ids[:: max(1, a.devices // a.changed)][: a.changed])
        full: list[float] = []
        incr: list[float] = []
        for _ in range(a.rounds):
            for dirty, out in ((None, full), (changed, incr)):
                r = Rollout.from_dicts(r0.id, spec.to_dict(), status)
                t = time.perf_counter()
                svc.step(r, dirty)
                out.append(time.perf_counter() - t)
        store.close()
    f, i = statistics.median(full) * 1e3, statistics.median(incr) * 1e3
    print(f"{'pass':<34}{'median ms':>12}{'min ms':>10}")
    print(f"{'baseline: full scan':<34}{f:>12.2f}{min(full) * 1e3:>10.2f}")
    print(f"{f'ours: {len(changed)} changed of {a.devices}':<34}{i:>12.2f}{min(incr) * 1e3:>10.2f}")
    print(f"speed-up {f / i:.1f}x; full scan {f / a.devices * 1e3:.0f} µs per waiting device")
    print(
        json.dumps(
            {
                "bench": "rollouts",
                "devices": a.devices,
                "changed": len(changed),
                "full_scan_ms": round(f, 3),
                "incremental_ms": round(i, 3),
                "speedup": round(f / i, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
