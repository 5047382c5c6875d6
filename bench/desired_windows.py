"""What maintenance windows cost the plane's desired-state path, measured in one process.

Usage::

    python bench/desired_windows.py                  # 20 rounds of 2,000 calls each
    python bench/desired_windows.py --rounds 50 --calls 5000

`Plane.desired_state(device)` is what every GetDesiredState answers with; a device's
signed document is cached per (generation, windows), so nearly every call is a cache
hit and its cost is the lookup. Three set-ups on one real plane (SQLite store), in
turns round by round so a busy machine slows them alike:

- ``none``: the plane without a window book (the path before windows existed);
- ``book-empty``: a window book, no window in the table;
- ``book-3``: 8 windows in the table, 3 of them matching the device's labels.

Each set-up also signs once per round (the cache dropped) to show the miss cost.
Prints a table (µs per call, ratio to ``none``), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.store.windows import WindowStore
from cloud.testing import running_plane
from cloud.windows import WindowBook
from runtime.maintenance_window import MaintenanceWindow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_plane(Path(tmp) / "plane") as p:
        plane = p.control.plane
        assert plane is not None
        p.device("robot-1", labels={"site": "dock", "role": "arm"})
        p.store.set_desired(
            ["robot-1"], {"name": "pendulum", "version": "1.1.0", "sequence": 2, "target": "t"}
        )
        device = p.store.get_device("robot-1")
        assert device is not None
        windows = WindowStore(p.store.engine)
        empty = WindowBook(lambda: [])
        full = WindowBook(windows.all)
        for i in range(8):
            labels = {"site": "dock"} if i < 3 else {"site": f"other-{i}"}
            w = MaintenanceWindow.build(f"w{i}", "mon-fri", "02:00", "04:00", "Europe/Berlin")
            windows.put(w, labels, actor="bench")
        setups = {"none": None, "book-empty": empty, "book-3": full}
        hit: dict[str, list[float]] = {k: [] for k in setups}
        miss: dict[str, list[float]] = {k: [] for k in setups}
        for _ in range(args.rounds):
            for name, book in setups.items():
                plane.windows = book
                plane._desired_cache.clear()
                t0 = time.perf_counter()
                plane.desired_state(device)  # signs
                miss[name].append((time.perf_counter() - t0) * 1e6)
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    plane.desired_state(device)
                hit[name].append((time.perf_counter() - t0) * 1e6 / args.calls)
    base = statistics.median(hit["none"])
    print(f"{'set-up':<12} {'hit µs/call':>12} {'ratio':>7} {'miss µs (sign)':>15}")
    out: dict[str, float] = {}
    for name in setups:
        h, m = statistics.median(hit[name]), statistics.median(miss[name])
        print(f"{name:<12} {h:>12.2f} {h / base:>7.2f} {m:>15.0f}")
        out[f"{name}_hit_us"] = round(h, 3)
        out[f"{name}_miss_us"] = round(m, 1)
    out["book3_hit_ratio"] = round(statistics.median(hit["book-3"]) / base, 3)
    print(json.dumps({"bench": "desired_windows", "rounds": args.rounds, **out}))


if __name__ == "__main__":
    main()
