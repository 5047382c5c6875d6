"""Rollout pass benchmark: one full driver pass over a dispatched wave, with the devices'
rows and update events read robot by robot (baseline: two queries per robot, as the
pass read them before) and as the plane reads them (ours: `RolloutService._pass_reads`,
two queries per 500 robots).

Usage::

    python bench/rollout_pass.py                       # 1000 and 10000 robots, PostgreSQL
    python bench/rollout_pass.py --robots 200 --store sqlite

For each fleet size: a one-wave rollout to every robot, dispatched; a third of the
robots reported COMMITTED, a tenth HELD (an update lock), the others nothing yet, so
the wave keeps waiting and a pass changes nothing in the store. Each pass steps a fresh
copy of the saved rollout (`RolloutService.step` with no dirty set: a full pass, which
the plane runs at start and every few seconds). Both must come to the same outcome
counts. Prints a table and, last, one JSON line.
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
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.rollouts.engine import Rollout, RolloutSpec
from cloud.rollouts.gates import GateSpec
from cloud.rollouts.service import RolloutService
from cloud.store import DeviceRecord, EventRecord, Store

BUNDLE = {
    "name": "p",
    "version": "1.1.0",
    "sequence": 2,
    "target": "p-1.1.0.efb",
    "sha256": "ab" * 32,
    "length": 10,
}


class PerRobot(RolloutService):
    """The baseline: each robot's newest update events and its row, read on their own."""

    def _pass_reads(
        self, checks: list[tuple[str, float]]
    ) -> tuple[dict[str, DeviceRecord], dict[str, list[EventRecord]]]:
        rows: dict[str, DeviceRecord] = {}
        events: dict[str, list[EventRecord]] = {}
        for d, _ in checks:
            events[d] = self.store.events(d, kind="update", limit=20)
            rec = self.store.get_device(d)
            if rec is not None:
                rows[d] = rec
        return rows, events


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
        store = Store.open(pg.create_database("rollout_pass"))
        try:
            yield store
        finally:
            store.close()


def fleet(store: Store, n: int, tag: str) -> tuple[list[str], float]:
    """`n` robots, their wave dispatched a minute ago, a third committed, a tenth held."""
    ids = [f"{tag}{i:05d}" for i in range(n)]
    store.add_devices_bulk([(d, f"{i:032x}{n:032x}", {"g": tag}) for i, d in enumerate(ids)])
    dispatched = time.time() - 60
    at = dt.datetime.fromtimestamp(dispatched + 5, dt.UTC)
    seq = itertools.count(1)
    for i, d in enumerate(ids):
        store.record_event(
            EventRecord(d, next(seq), at, "update", "DOWNLOADING", "", "", dict(BUNDLE))
        )
        if i % 3 == 0:
            store.record_event(
                EventRecord(d, next(seq), at, "update", "COMMITTED", "", "", dict(BUNDLE))
            )
        elif i % 10 == 1:
            store.record_event(
                EventRecord(
                    d, next(seq), at, "update", "HELD", "UPDATE_LOCKED", "arm busy", dict(BUNDLE)
                )
            )
    return ids, dispatched


def saved(ids: list[str], dispatched: float, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    gates = GateSpec(allow_unattested=True, override_by="bench").to_dict()
    spec = RolloutSpec(BUNDLE, tuple(ids), (1.0,), 0.0, 3600, gates=gates)
    r = Rollout.create(f"ro-{tag}", spec, now=dispatched - 1, created_by="bench")
    r.start(dispatched - 1)
    r.dispatched(0, dispatched, {d: None for d in ids})
    return spec.to_dict(), r.to_status()


def one_pass(
    svc: RolloutService, rid: str, spec: dict[str, Any], status: dict[str, Any]
) -> tuple[float, dict[str, int]]:
    r = Rollout.from_dicts(rid, spec, json.loads(json.dumps(status)))
    t = time.perf_counter()
    svc.step(r, None)
    took = time.perf_counter() - t
    w = r.waves[0]
    counts = {o: w.count(o) for o in ("COMMITTED",)}
    counts["held"] = len(w.held)
    counts["waiting"] = len(w.waiting)
    return took, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", default="1000,10000", help="comma-separated fleet sizes")
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="postgres")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    sizes = [int(x) for x in a.robots.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open_store(a.store, Path(tmp)) as store:
        plane = types.SimpleNamespace(store=store, home=None, config=None)
        services = {
            "baseline: per robot": PerRobot(plane, hints=False),  # type: ignore[arg-type]
            "ours: bulk read": RolloutService(plane, hints=False),  # type: ignore[arg-type]
        }
        for n in sizes:
            tag = f"n{n}-"
            ids, dispatched = fleet(store, n, tag)
            spec, status = saved(ids, dispatched, tag)
            got: dict[str, tuple[float, dict[str, int]]] = {}
            for name, svc in services.items():
                times: list[float] = []
                counts: dict[str, int] = {}
                for _ in range(a.repeat):  # interleaving would share the cache evenly too
                    took, counts = one_pass(svc, f"ro-{tag}", spec, status)
                    times.append(took)
                got[name] = (statistics.median(times), counts)
            (base, bc), (ours, oc) = got["baseline: per robot"], got["ours: bulk read"]
            if bc != oc:
                raise SystemExit(f"{n} robots: the two reads disagree: {bc} vs {oc}")
            rows.append((n, base, ours, oc))
    print(f"one full rollout driver pass over a dispatched wave, {a.store}, median of {a.repeat}")
    print(f"{'robots':>7}{'baseline ms':>13}{'ours ms':>10}{'ratio':>8}  outcome counts")
    for n, base, ours, counts in rows:
        print(f"{n:>7}{base * 1e3:>13.1f}{ours * 1e3:>10.1f}{ours / base:>8.3f}  {counts}")
    print(
        json.dumps(
            {
                "bench": "rollout_pass",
                "store": a.store,
                "robots": [n for n, *_ in rows],
                "baseline_ms": [round(b * 1e3, 1) for _, b, _, _ in rows],
                "ours_ms": [round(o * 1e3, 1) for _, _, o, _ in rows],
                "ratio": [round(o / b, 3) for _, b, o, _ in rows],
            }
        )
    )


if __name__ == "__main__":
    main()
