"""What the simulated robots themselves cost: CPU per telemetry message, and the time
to connect them, for the earlier paho robots and `bench.simrobot`'s, in one run.

Usage::

    python bench/sim_cost.py                               # 2,000 robots, 1 Hz, 20 s
    python bench/sim_cost.py --robots 5000 --rate 2 --seconds 30 --procs 2 --rounds 2

Both kinds of robot, taking turns round by round, connect to the same Mosquitto
(`cloud broker-config`'s configuration, mTLS, a certificate per robot) and send to a
bare consumer that only decodes and counts (`bench.fleet_scale`'s). CPU is read from
/proc for the robot processes over the load only (user + system), divided by the
telemetry messages they sent: the robots' cost per message, PUBACK handling and
keep-alives included, connecting not. Connect time is from starting the robot
processes to every robot connected and subscribed, with the load average then.

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_scale import PhaseResult, fleet_broker, fleet_devices, fleet_services, run_phase
from bench.simcerts import fleet_pki

CLIENTS = ("paho", "lean")


def measure(args: Any) -> dict[str, Any]:
    devs = fleet_devices(args.robots)
    clients = tuple(c for c in CLIENTS if c in args.clients)
    rows: dict[str, list[PhaseResult]] = {c: [] for c in clients}
    with tempfile.TemporaryDirectory() as tmp:
        pki, _ = fleet_pki(args.cert_cache or Path(tmp) / "pki", devs, fleet_services())
        with fleet_broker(pki, Path(tmp) / "broker", devs) as port:
            print(
                f"{args.robots} robots in {args.procs} processes, {args.rate:g} Hz for "
                f"{args.seconds:g} s, bare consumer; {os.cpu_count()} CPUs",
                flush=True,
            )
            print(
                f"\n{'client':6s} {'round':>5s} {'sent':>8s} {'lost':>5s} {'robot cores':>11s} "
                f"{'us/msg':>7s} {'connect':>8s} {'load':>5s} {'lag p99':>8s}",
                flush=True,
            )
            for k in range(args.rounds):
                for client in clients if k % 2 == 0 else clients[::-1]:
                    args.client = client
                    r = run_phase("bare", devs, pki, port, None, args, args.rate)
                    rows[client].append(r)
                    print(
                        f"{client:6s} {k + 1:5d} {r.sent:8d} {r.lost:5d} "
                        f"{(r.cores or {}).get('robots', 0.0):11.2f} {r.robot_us_per_msg:7.1f} "
                        f"{r.connect_s:7.1f}s {r.connect_load:5.2f} {r.lag_p99_s:7.3f}s",
                        flush=True,
                    )
    out: dict[str, Any] = {"robots": args.robots, "rate_hz": args.rate, "procs": args.procs}
    for c in clients:
        out[f"{c}_us_per_msg"] = round(statistics.median(r.robot_us_per_msg for r in rows[c]), 1)
        out[f"{c}_connect_s"] = round(statistics.median(r.connect_s for r in rows[c]), 1)
        out[f"{c}_lost"] = sum(r.lost for r in rows[c])
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print()
    for c in clients:
        print(
            f"{c}: {out[f'{c}_us_per_msg']:.1f} us per message, "
            f"connected in {out[f'{c}_connect_s']:.1f} s"
        )
    if len(clients) == 2:
        for what in ("us_per_msg", "connect_s"):
            out[f"{what}_ratio_lean_vs_paho"] = round(
                out[f"lean_{what}"] / max(1e-9, out[f"paho_{what}"]), 3
            )
        print(f"lean / paho: {out['us_per_msg_ratio_lean_vs_paho']:.3f} of the CPU per message")
    print(json.dumps(out))
    return out


def parse(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robots", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=1.0, help="telemetry messages/s per robot")
    ap.add_argument("--procs", type=int, default=2, help="robot processes")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--clients",
        type=lambda t: [c for c in t.split(",") if c],
        default=list(CLIENTS),
        help="which robots to measure: paho,lean (default both)",
    )
    ap.add_argument("--cert-cache", type=Path, default=None)
    ap.add_argument("--connect-concurrency", type=int, default=32)
    ap.add_argument("--connect-s", type=float, default=900.0)
    args = ap.parse_args(argv)
    args.fanout = False
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return measure(parse(argv))


if __name__ == "__main__":
    main()
