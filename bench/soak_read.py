"""Soak read benchmark: what a soak decision reads from the store for a wave, read robot
by robot (baseline: one telemetry query per robot, each point's whole JSON decoded) and
as the plane reads it (ours: `cloud.rollouts.readings`, one window query for the
telemetry with the two counters extracted by the database, one for the events).

Usage::

    python bench/soak_read.py                        # 1000 robots, SQLite
    python bench/soak_read.py --robots 200 --store postgres

Each robot has a minute of telemetry at 1 Hz (counters, loop p99, the extra fields
ingest stores); both read the same 30 s window. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.rollouts.readings import readings
from cloud.rollouts.soak import Sample
from cloud.store import Store, TelemetryRecord


def per_robot(store: Store, ids: list[str], start: float, end: float) -> dict[str, list[Sample]]:
    """The baseline: each robot's points on their own, as the soak read them before."""
    since = dt.datetime.fromtimestamp(start, dt.UTC)
    out: dict[str, list[Sample]] = {}
    for d in ids:
        pts = []
        for p in store.telemetry(d, since=since, limit=5000):
            at = p.at.timestamp()
            if at <= end:
                extra = p.extra or {}
                ticks, misses = extra.get("ticks"), extra.get("deadline_misses")
                pts.append(Sample(at, int(ticks or 0), int(misses or 0), p.safety_interventions))
        out[d] = pts
    return out


@contextlib.contextmanager
def store_at(kind: str, tmp: Path) -> Iterator[Store]:
    if kind == "sqlite":
        store = Store.open(f"sqlite:///{tmp}/plane.db")
        yield store
        store.close()
        return
    from tests.servers import run_postgres

    with run_postgres() as pg:
        store = Store.open(str(pg.create_database("soak_read")))
        yield store
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=1000)
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, store_at(a.store, Path(tmp)) as store:
        ids = [f"r{i:05d}" for i in range(a.robots)]
        store.add_devices_bulk([(d, f"{i:064x}", {"g": "x"}) for i, d in enumerate(ids)])
        t0 = time.time() - 60
        seq = itertools.count(1)
        for d in ids:
            pts = [
                TelemetryRecord(
                    at=dt.datetime.fromtimestamp(t0 + k, dt.UTC),
                    loop_p99_ms=1.0,
                    extra={
                        "ticks": 50 * k,
                        "deadline_misses": k // 2,
                        "interventions": {"joint_limit": k // 10},
                        "loop_p999_ms": 1.5,
                        "disk_free_bytes": 1e10,
                    },
                )
                for k in range(60)
            ]
            store.record_telemetry(d, next(seq), pts)
        start, end = t0 + 20, t0 + 50
        runs = {
            "baseline: per robot": lambda: per_robot(store, ids, start, end),
            "ours: one window read": lambda: readings(store, ids, start, end, {"name": "p"}),
        }
        ms: dict[str, float] = {}
        best: dict[str, float] = {}
        for name, fn in runs.items():
            times = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            ms[name] = statistics.median(times) * 1e3
            best[name] = min(times) * 1e3
    base, ours = ms["baseline: per robot"], ms["ours: one window read"]
    print(f"{a.robots} robots, 30 points each in the window, {a.store}")
    print(f"{'read':<26}{'median ms':>11}{'min ms':>9}")
    for name, v in ms.items():
        print(f"{name:<26}{v:>11.1f}{best[name]:>9.1f}")
    ratio_min = best["ours: one window read"] / best["baseline: per robot"]
    print(f"ours/baseline {ours / base:.2f}x (median), {ratio_min:.2f}x (min)")
    print(
        json.dumps(
            {
                "bench": "soak_read",
                "robots": a.robots,
                "store": a.store,
                "baseline_ms": round(base, 1),
                "ours_ms": round(ours, 1),
                "ratio": round(ours / base, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
