"""Telemetry write paths into PostgreSQL, measured in one process on one database.

Usage::

    python bench/telemetry_write.py                 # 20 rounds of 1,000 points each
    python bench/telemetry_write.py --rounds 50 --batch 2000

Each round appends one ingest batch of `--batch` telemetry points (one per device, the
row shape `cloud.ingest` writes) in one transaction, by three paths:

- ``executemany``: SQLAlchemy ``conn.execute(insert, rows)`` (the old ingest path);
- ``values``: one ``INSERT ... VALUES (...), (...), ...`` statement per round;
- ``copy``: ``COPY telemetry (...) FROM STDIN`` on the same transaction
  (`cloud.store.ingest_batch.copy_points`, what ingest uses now).

The paths take turns round by round, so a busy machine slows them alike. Prints a
table (points/s, ms per batch) with the ratio to ``executemany``, then one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.engine import Connection

from cloud.store import Store
from cloud.store.ingest_batch import POINT_COLUMNS, T, copy_points
from tests.servers import run_postgres


def _rows(n: int, round_no: int) -> list[dict[str, Any]]:
    at = dt.datetime.now(dt.UTC)
    return [
        {
            "device_id": f"sim-{i:05d}",
            "at": at,
            "sequence": round_no,
            "loop_p50_ms": 0.1,
            "loop_p99_ms": 0.2,
            "deadline_miss_rate": 0.0,
            "safety_interventions": 0,
            "cpu_percent": 12.5,
            "memory_percent": 40.0,
            "temperature_c": 45.0,
            "extra": None,
        }
        for i in range(n)
    ]


def _executemany(conn: Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute(T.insert(), rows)


def _values(conn: Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute(T.insert().values(rows))


PATHS: dict[str, Callable[[Connection, list[dict[str, Any]]], None]] = {
    "executemany": _executemany,
    "values": _values,
    "copy": copy_points,
}


def run(args: Any) -> dict[str, Any]:
    assert set(POINT_COLUMNS) == set(_rows(1, 0)[0])
    times: dict[str, list[float]] = {k: [] for k in PATHS}
    with run_postgres() as pg:
        store = Store.open(pg.create_database("telemetry_write"))
        try:
            for r in range(args.rounds + 1):  # round 0 warms every path up
                for name, write in PATHS.items():
                    rows = _rows(args.batch, r)
                    t0 = time.perf_counter()
                    with store.engine.begin() as conn:
                        write(conn, rows)
                    if r:
                        times[name].append(time.perf_counter() - t0)
        finally:
            store.close()
    base = statistics.median(times["executemany"])
    print(f"{'path':12s} {'points/s':>10s} {'ms/batch':>9s} {'vs executemany':>15s}")
    out: dict[str, Any] = {"batch": args.batch, "rounds": args.rounds}
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:12s} {args.batch / med:10.0f} {med * 1000:9.1f} {base / med:14.2f}x")
        out[f"{name}_points_s"] = round(args.batch / med)
    out["copy_vs_executemany"] = round(base / statistics.median(times["copy"]), 2)
    out["values_vs_executemany"] = round(base / statistics.median(times["values"]), 2)
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1000, help="points per transaction")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
